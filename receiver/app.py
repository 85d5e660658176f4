"""The app factory: settings in, a Starlette app out. Importing this module does nothing."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.admin import api
from receiver.clock import Clock, system_clock
from receiver.console import routes as console
from receiver.console import web as console_web
from receiver.context import AppContext
from receiver.errors import ConfigurationError, SchemaNotCurrent, one_line
from receiver.intake import pages
from receiver.intake import returns as web
from receiver.intake.connguard import BodyBudget, connection_limits
from receiver.intake.hooks import router_hooks
from receiver.intake.middleware import (
    RequestContextMiddleware,
    RouteGroups,
    loggable_path,
    token_routes,
)
from receiver.intake.router import HookRouter
from receiver.logs import configure_logging, get_logger
from receiver.pipeline.hook_token_split import split_quietly
from receiver.pipeline.repoint import repoint_if_public_url_changed
from receiver.pipeline.rules import RuleBook
from receiver.providers.contract import HOOK_TOKEN, Provider
from receiver.providers.registry import discover
from receiver.settings import Settings, load_section, load_settings, redact_url
from receiver.store.db import open_database
from receiver.store.migrate import current_revision, head_revision, upgrade
from receiver.worker import Worker

log = get_logger("signback.app")


def build_providers(settings: Settings) -> tuple[dict[str, Provider], list[str]]:
    """The installed providers (the registry), each built from its own settings, and the
    rules modules in force: the providers', then the user's."""
    providers: dict[str, Provider] = {}
    rule_modules: list[str] = []
    for name, package in discover(settings.provider_modules or "").items():
        section = settings.section_named(name)
        if section is None:  # settings built directly (not by load_settings): the environment's
            section = load_section(package.settings)
            settings.with_sections({name: section})
        provider = package.build(section)
        if provider.name != name:
            raise ConfigurationError(f"provider {name!r} builds a provider named {provider.name!r}")
        providers[name] = provider
        if package.rules_module:
            rule_modules.append(package.rules_module)
    if settings.rules_module:
        rule_modules.append(settings.rules_module)
    return providers, rule_modules


def build_context(
    settings: Settings, *, clock: Clock = system_clock, rate_window_seconds: float = 60.0
) -> AppContext:
    """Everything a running signback needs: the installed providers, their rules and the
    user's, the database."""
    providers, rule_modules = build_providers(settings)
    db = open_database(
        settings.database_url,
        pool_min=settings.db_pool_min,
        pool_max=settings.db_pool_max,
        sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    return AppContext(
        settings=settings,
        db=db,
        providers=providers,
        rules=RuleBook.load(rule_modules, settings),
        clock=clock,
        rate_window_seconds=rate_window_seconds,
    )


async def prepare_database(ctx: AppContext, *, serving: bool = True) -> None:
    """SQLite is migrated at start (zero set-up); PostgreSQL by `signback migrate` (release).

    A PostgreSQL server that cannot be reached is logged when ``serving`` (the service
    starts anyway, and /readyz reports it until it answers); otherwise (a CLI command) the
    error is raised."""
    if ctx.settings.is_sqlite:
        await asyncio.to_thread(upgrade, ctx.settings.database_url)
    await ctx.db.connect()
    if not ctx.settings.is_sqlite:
        try:
            current = await current_revision(ctx.db)
        except Exception as exc:
            if not serving:
                raise
            log.error(
                "database unreachable at start; /readyz reports it until it answers",
                database=redact_url(ctx.settings.database_url),
                error=one_line(exc),
            )
            return
        if current != head_revision():
            if not serving:  # a command that would only fail on a missing table: say why
                raise SchemaNotCurrent(
                    f"schema is not current (database at {current or 'no migration'}, code at"
                    f" {head_revision()}): run signback migrate"
                )
            log.error(
                "database schema is not current: run `signback migrate`",
                database=current,
                code=head_revision(),
            )


async def repoint_quietly(ctx: AppContext) -> None:
    """Re-point open requests if the public URL changed; a database outage must not stop
    the start-up (it is retried at the next start, and /readyz shows the outage)."""
    try:
        await repoint_if_public_url_changed(ctx)
    except Exception as exc:
        log.error("could not check for a public URL change", error=str(exc))


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock = system_clock,
    run_worker: bool | None = None,
    rate_window_seconds: float = 60.0,
) -> HookRouter:
    """``clock`` and ``rate_window_seconds`` (the length of a provider's rate-limit minute)
    are for tests; the service uses the defaults."""
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    ctx = build_context(settings, clock=clock, rate_window_seconds=rate_window_seconds)
    with_worker = settings.run_worker if run_worker is None else run_worker
    limits = connection_limits(settings)  # raises the descriptor limit as far as allowed

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await prepare_database(ctx)
        await ctx.start_providers()
        await split_quietly(ctx)
        await repoint_quietly(ctx)
        ctx.rejections.start()
        worker = Worker(ctx) if with_worker else None
        if worker is not None:
            worker.start()
        log.info(
            "signback started",
            database=ctx.db.dialect,
            public_url=settings.public_url,
            worker=with_worker,
            providers=sorted(ctx.providers),
            rules=[r.name for r in ctx.rules.rules],
            max_connections=limits.max_connections,
        )
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise walk it all (tens of ms, a latency spike).
        # Collect first, so that start-up garbage (migrations, imports) is not frozen too.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await ctx.rejections.stop()
            await ctx.close()
            await ctx.db.close()
            log.info("signback stopped")

    routes = [*web.routes(ctx), *api.routes(ctx), *console.routes(ctx)]
    specs = {name: provider.hook_specs(ctx) for name, provider in ctx.providers.items()}
    hooks = [hook for name, found in specs.items() for hook in router_hooks(ctx, name, found)]
    groups = RouteGroups(provider.hook_prefix for provider in ctx.providers.values())
    # A hook-token route's last segment is a credential: never logged, whatever it looks like.
    token_routes(
        spec.path.rpartition("/")[0]
        for found in specs.values()
        for spec in found
        if spec.parameter == HOOK_TOKEN
    )

    async def http_error(request: Request, exc: Exception) -> Response:
        # The router's own 404/405 (unknown path, wrong method): JSON like every other refusal.
        assert isinstance(exc, HTTPException)
        if pages.is_browser_path(request.url.path):  # a signer's browser: a page, not JSON
            return pages.error(exc.status_code, exc.headers)
        if request.url.path.startswith("/console/"):  # an operator's browser: a page too
            return console_web.problem_page(exc.status_code, str(exc.detail))
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", path=loggable_path(request.url.path))
        if pages.is_browser_path(request.url.path):
            return pages.error(500)
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    # Starlette redirects a path with a trailing slash to one without (307), building the
    # Location from the Host header: an open redirect for a signer's browser. No path here
    # needs it, so nothing is redirected: an unknown path is a 404 (a page under /return/).
    app.router.redirect_slashes = False
    app.state.ctx = ctx
    app.add_middleware(RequestContextMiddleware, metrics=ctx.metrics, groups=groups)
    # Callbacks take the fast path in front of Starlette; everything else goes through it.
    return HookRouter(
        app,
        hooks,
        ctx.metrics,
        ctx.intake_load,
        limits=limits,
        budget=BodyBudget(settings.max_body_bytes_in_flight),
        max_body_bytes=settings.max_body_bytes,
        groups=groups,
    )


def create_app_from_env() -> HookRouter:
    """Factory for ``uvicorn --factory receiver.app:create_app_from_env`` (Procfile, workers)."""
    return create_app()
