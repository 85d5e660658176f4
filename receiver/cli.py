"""The ``signback`` command: serve, worker, migrate, requests, reconcile, outbox, inbox,
endpoints, fake, simulate."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from receiver.cli_types import PORT, ROW_ID, WORKERS
from receiver.errors import ConfigurationError, SchemaNotCurrent
from receiver.settings import (
    Settings,
    check_settings,
    database_url_from_env,
    load_settings,
    redact_url,
)
from receiver.store.statuses import ActionStatus, InboxStatus

P = ParamSpec("P")
T = TypeVar("T")


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr and an exit code: 2 for what the user must fix (configuration,
    arguments), 1 for what failed (the database)."""
    click.secho(message, fg="red", err=True)
    sys.exit(code)


def _command() -> str:
    """``signback requests list`` and the like, for messages."""
    context = click.get_current_context(silent=True)
    return context.command_path if context is not None else "signback"


def _settings(**overrides: Any) -> Settings:
    command = _command()
    starts = command.split()[-1] in ("serve", "worker")
    purpose = "signback cannot start" if starts else f"{command} cannot run"
    try:
        return load_settings(purpose=purpose, **overrides)
    except ConfigurationError as exc:
        _fail(str(exc))
        raise  # unreachable; keeps mypy happy


def handles_config_errors(function: Callable[P, T]) -> Callable[P, T]:
    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except ConfigurationError as exc:
            _fail(str(exc))
            raise

    return wrapper


def _configured(name: str) -> bool:
    """Set in the environment or in ./.env (pydantic-settings reads both)."""
    from dotenv import dotenv_values

    return bool(os.environ.get(name)) or bool(
        os.path.exists(".env") and dotenv_values(".env").get(name)
    )


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


async def _with_context(
    settings: Settings,
    action: Callable[[Any], Awaitable[T]],
    *,
    migrate_sqlite: bool = True,
    serving: bool = False,
) -> T:
    """Run ``action`` with a context on the configured database. A command that does one
    thing fails (one line) when the database cannot be reached; a ``serving`` one (the
    worker) starts anyway and waits for it."""
    from receiver.app import build_context, prepare_database
    from receiver.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    ctx = build_context(settings)
    try:
        if migrate_sqlite:
            await prepare_database(ctx, serving=serving)
        else:
            await ctx.db.connect()
        return await action(ctx)
    finally:
        await ctx.close()
        await ctx.db.close()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's work; a database that cannot answer ends it with one line."""
    from receiver.errors import one_line
    from receiver.store.db.errors import DATABASE_ERRORS

    try:
        return asyncio.run(coro)
    except SchemaNotCurrent as exc:
        _fail(f"{_command()}: {exc}", code=1)
        raise  # unreachable; keeps mypy happy
    except DATABASE_ERRORS as exc:
        _fail(f"{_command()}: the database could not answer: {one_line(exc)}", code=1)
        raise  # unreachable; keeps mypy happy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="signback")
def main() -> None:
    """signback: a durable callback receiver for e-signature providers."""


@main.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1; PaaS: 0.0.0.0).")
@click.option("--port", type=PORT, default=None, help="Port (default $PORT, else 8000).")
@click.option("--public-url", default=None, help="Public base URL callbacks use (tunnel, PaaS).")
@click.option(
    "--workers", type=WORKERS, default=None, help="Web processes (default $WEB_CONCURRENCY or 1)."
)
@click.option(
    "--no-worker", is_flag=True, help="Do not run the pipeline and outbox in this process."
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Proxies trusted for X-Forwarded-* (default $FORWARDED_ALLOW_IPS or 127.0.0.1).",
)
def serve(
    host: str | None,
    port: int | None,
    public_url: str | None,
    workers: int | None,
    no_worker: bool,
    forwarded_allow_ips: str | None,
) -> None:
    """Receive callbacks (and, unless --no-worker, process them and send the outbox)."""
    import uvicorn

    from receiver.intake import uvicorn_compat
    from receiver.logs import configure_logging, get_logger

    port = port if port is not None else int(os.environ.get("PORT", "8000"))
    if public_url:
        os.environ["SIGNBACK_PUBLIC_URL"] = public_url
    elif not _configured("SIGNBACK_PUBLIC_URL"):
        # Local default: callbacks come back to this very port. Behind a tunnel or on a
        # PaaS the real public URL must be configured (a warning says so below).
        local = host if host and host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        os.environ["SIGNBACK_PUBLIC_URL"] = f"http://{local}:{port}"
        if host in ("0.0.0.0", "::"):  # noqa: S104
            click.secho(
                "SIGNBACK_PUBLIC_URL is not set: callback URLs will point at "
                f"{os.environ['SIGNBACK_PUBLIC_URL']}, which providers cannot reach.",
                fg="yellow",
                err=True,
            )
    if no_worker:
        os.environ["SIGNBACK_RUN_WORKER"] = "false"
    settings = _settings()  # fail fast, with a message naming what is missing
    workers = workers if workers is not None else int(os.environ.get("WEB_CONCURRENCY", "1"))
    if settings.is_sqlite and workers > 1:
        click.secho("SQLite serves one process well; use PostgreSQL for --workers > 1.", err=True)
    # signback's HTTP protocol, unless the installed uvicorn lacks what it relies on.
    compatibility = uvicorn_compat.check()
    if compatibility.warning:
        configure_logging(settings.log_level, settings.log_format)
        get_logger("signback.serve").warning(compatibility.warning)
    uvicorn.run(
        "receiver.app:create_app_from_env",
        factory=True,
        host=host or "127.0.0.1",
        port=port,
        workers=workers,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips
        or os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        # Ours (receiver.intake.middleware) hides callback tokens; uvicorn's does not.
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=3,  # then the lifespan drains the outbox (25 s by default)
        timeout_keep_alive=settings.keepalive_seconds,
        server_header=False,
        # uvicorn's httptools protocol with connection limits, answering callbacks without
        # the ASGI round trip (receiver/intake/protocol.py), where the installed uvicorn allows.
        http=compatibility.protocol,
    )


@main.command()
@handles_config_errors
def worker() -> None:
    """Run only the pipeline and the outbox dispatcher (no HTTP)."""
    from receiver.worker import Worker

    settings = _settings()

    async def run(ctx: Any) -> None:
        from receiver.app import repoint_quietly
        from receiver.pipeline.hook_token_split import split_quietly

        await ctx.start_providers()
        await split_quietly(ctx)
        await repoint_quietly(ctx)
        runner = Worker(ctx)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stopping.set)
        await runner.run()

    _run(_with_context(settings, run, serving=True))


@main.command()
@handles_config_errors
def migrate() -> None:
    """Bring the database schema up to date (the Procfile's release step)."""
    from receiver.errors import one_line
    from receiver.store.db.errors import DATABASE_ERRORS
    from receiver.store.migrate import head_revision, upgrade

    # Only the database URL is needed here (a release step may not have the other secrets),
    # but a variable set to a value that is not valid is reported now, not at the next start.
    check_settings(purpose="signback migrate cannot run")
    url = database_url_from_env()
    try:
        upgrade(url)
    except DATABASE_ERRORS as exc:
        _fail(f"signback migrate: cannot migrate {redact_url(url)}: {one_line(exc)}", code=1)
    click.echo(f"database {redact_url(url)} is at migration {head_revision()}")


# --- requests -----------------------------------------------------------------------------


@main.group()
def requests() -> None:
    """Register and inspect signature requests."""


def _json_option(value: str | None, name: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint=name)
    return parsed


# The API's field names, as this command's options, for its error messages.
OPTION_NAMES = {"documentId": "--document-id", "document_id": "--document-id"}


if TYPE_CHECKING:
    _ParamType = click.ParamType[str]
else:  # generic only from click 8.2 on
    _ParamType = click.ParamType


class ProviderName(_ParamType):
    """One of the installed providers' names (the registry's, read when the option is)."""

    name = "provider"

    def _names(self) -> list[str]:
        from receiver.providers.registry import discover

        return sorted(discover())

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        try:
            return "[" + "|".join(self._names()) + "]"
        except ConfigurationError:
            return "PROVIDER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            names = self._names()
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)
        if value not in names:
            self.fail(f"{value!r} is not one of {', '.join(map(repr, names))}.", param, ctx)
        return str(value)


@requests.command("add")
@click.option("--provider", required=True, type=ProviderName())
@click.option("--id", "external_id", required=True, help="The provider's id of the request.")
@click.option("--document-id", default=None, help="The provider's document id, where it has one.")
@click.option("--reference", default=None, help="Your own reference (order, case, …).")
@click.option("--return-url", default=None, help="Where the signer's browser goes afterwards.")
@click.option("--retry-url", default=None, help="Where a signer who cancelled is sent next time.")
@click.option("--metadata", default=None, help="Free JSON object.")
@click.option("--defaults", default=None, help="Provider properties to apply while a draft.")
@handles_config_errors
def requests_add(
    provider: str,
    external_id: str,
    document_id: str | None,
    reference: str | None,
    return_url: str | None,
    retry_url: str | None,
    metadata: str | None,
    defaults: str | None,
) -> None:
    """Register a signature request and print its callback URLs."""
    from receiver.admin.api import registration_problems, request_json
    from receiver.pipeline.registration import Registration, register

    problems: list[str] = []
    options: dict[str, dict[str, Any]] = {}
    for name, value in (("--metadata", metadata), ("--defaults", defaults)):
        try:
            options[name] = _json_option(value, name)
        except click.BadParameter as exc:
            problems.append(f"{name}: {exc.message}")
    data = {
        "provider": provider,
        "signature_request_id": external_id,
        "document_id": document_id,
        "reference": reference,
        "return_url": return_url,
        "retry_url": retry_url,
        "metadata": options.get("--metadata", {}),
        "defaults": options.get("--defaults", {}),
    }

    async def run(ctx: Any) -> dict[str, Any]:
        # Every problem at once: the options' JSON, the fields, and each of the defaults.
        body, fields = registration_problems(data, ctx.providers)
        problems.extend(
            f"{OPTION_NAMES.get(f['field'], f['field']) or 'request'}: {f['message']}"
            for f in fields
        )
        if body is None or problems:
            raise click.UsageError("invalid request:\n  " + "\n  ".join(problems))
        registered = await register(
            ctx,
            Registration(
                provider=provider,
                external_id=external_id,
                document_id=document_id,
                reference=reference,
                return_url=str(body.return_url) if body.return_url else None,
                retry_url=str(body.retry_url) if body.retry_url else None,
                metadata=body.metadata,
                defaults=body.defaults,
            ),
        )
        answer = request_json(registered.request, registered.urls)
        answer["created"] = registered.created
        return answer

    from receiver.errors import InvalidAction
    from receiver.pipeline.registration import RegistrationRefused

    try:
        _print_json(_run(_with_context(_settings(), run)))
    except InvalidAction as exc:
        _fail(f"invalid --defaults: {exc}")
    except RegistrationRefused as exc:
        _fail(
            "cannot register: "
            + "; ".join(
                f"{OPTION_NAMES.get(f['field'], f['field'])}: {f['message']}" for f in exc.fields
            )
        )


@requests.command("list")
@click.option("--state", default=None)
@click.option("--provider", default=None)
@click.option("--reference", default=None)
@click.option(
    "--stale",
    is_flag=True,
    help="Only open requests silent longer than expected in their state (SIGNBACK_STALE_AFTER).",
)
@click.option("--limit", default=50, show_default=True)
@handles_config_errors
def requests_list(
    state: str | None, provider: str | None, reference: str | None, stale: bool, limit: int
) -> None:
    """List requests, newest first."""
    from receiver.admin.api import request_json
    from receiver.store import reconcile as reconcile_store
    from receiver.store import requests as store

    if stale and (state is not None or reference is not None):
        _fail("--stale lists open requests: it takes no --state or --reference")

    async def run(ctx: Any) -> list[dict[str, Any]]:
        if stale:
            rows = await reconcile_store.stale(
                ctx.db,
                thresholds=ctx.settings.stale_after,
                now=ctx.clock(),
                provider=provider,
                limit=limit,
            )
        else:
            rows = await store.search(
                ctx.db, state=state, provider=provider, reference=reference, limit=limit
            )
        return [request_json(store.from_row(r)) for r in rows]

    _print_json(_run(_with_context(_settings(), run)))


@requests.command("show")
@click.argument("request_id", type=ROW_ID)
@handles_config_errors
def requests_show(request_id: int) -> None:
    """A request with its timeline and outbox actions (and their attempts)."""
    from receiver.admin.api import request_detail

    async def run(ctx: Any) -> dict[str, Any] | None:
        return await request_detail(ctx, request_id)

    found = _run(_with_context(_settings(), run))
    if found is None:
        _fail(f"no request with id {request_id}")
    _print_json(found)


# --- reconcile ----------------------------------------------------------------------------


@main.command()
@click.option("--request", "request_id", type=int, default=None, help="Only this request.")
@click.option("--provider", type=ProviderName(), default=None, help="Only this provider's.")
@click.option("--dry-run", is_flag=True, help="Read and say what it would do; store nothing.")
@handles_config_errors
def reconcile(request_id: int | None, provider: str | None, dry_run: bool) -> None:
    """Ask the providers for the real state of open requests, now.

    What a read finds goes down the same road as a callback (inbox, state machine, rules,
    downstream events), before this command answers; it prints one entry per request.
    Exit 0: every request was read; 1: a read failed (or the database could not answer);
    2: a usage or configuration problem (an unknown request or provider)."""
    from receiver.reconcile.manual import UnknownRequest, exit_code, reconcile_now

    async def run(ctx: Any) -> list[Any]:
        await ctx.start_providers()
        return await reconcile_now(ctx, request_id=request_id, provider=provider, dry_run=dry_run)

    try:
        results = _run(_with_context(_settings(), run))
    except UnknownRequest as exc:
        _fail(f"signback reconcile: {exc}")
        raise
    _print_json([r.as_json() for r in results])
    sys.exit(exit_code(results))


# --- outbox and inbox ---------------------------------------------------------------------


@main.group()
def outbox() -> None:
    """Inspect and re-queue outbound actions."""


@outbox.command("list")
@click.option("--status", default=None, help=", ".join(ActionStatus))
@click.option("--limit", default=50, show_default=True)
@handles_config_errors
def outbox_list(status: str | None, limit: int) -> None:
    """Actions, newest first, with their attempts."""
    from receiver.admin.api import action_json
    from receiver.store import outbox as store

    async def run(ctx: Any) -> list[dict[str, Any]]:
        rows = await store.search(ctx.db, status=status, limit=limit)
        attempts = await store.attempts_for(ctx.db, [int(r["id"]) for r in rows])
        return [action_json(r, attempts.get(int(r["id"]), [])) for r in rows]

    _print_json(_run(_with_context(_settings(), run)))


@outbox.command("retry")
@click.argument("action_id", type=ROW_ID)
@handles_config_errors
def outbox_retry(action_id: int) -> None:
    """Re-queue a dead or skipped action (a running worker picks it up)."""
    from receiver.store import outbox as store

    async def run(ctx: Any) -> str | None:
        if await store.retry(ctx.db, action_id, now=ctx.clock()):
            return None
        row = await store.get(ctx.db, action_id)
        return "no such action" if row is None else f"action is {row['status']}, not dead"

    problem = _run(_with_context(_settings(), run))
    if problem:
        _fail(f"cannot retry action {action_id}: {problem}")
    click.echo(f"action {action_id} re-queued")


@main.group()
def inbox() -> None:
    """Inspect stored callbacks; re-process failed or unmatched ones."""


@inbox.command("list")
@click.option("--status", default=None, help=", ".join(InboxStatus))
@click.option("--provider", default=None)
@click.option("--limit", default=50, show_default=True)
@handles_config_errors
def inbox_list(status: str | None, provider: str | None, limit: int) -> None:
    from receiver.admin.api import event_json
    from receiver.store import inbox as store

    async def run(ctx: Any) -> list[dict[str, Any]]:
        rows = await store.search(ctx.db, status=status, provider=provider, limit=limit)
        return [event_json(r) for r in rows]

    _print_json(_run(_with_context(_settings(), run)))


@inbox.command("retry")
@click.argument("inbox_id", type=ROW_ID)
@handles_config_errors
def inbox_retry(inbox_id: int) -> None:
    from receiver.store import inbox as store

    async def run(ctx: Any) -> bool:
        return await store.retry(ctx.db, inbox_id)

    if not _run(_with_context(_settings(), run)):
        _fail(f"event {inbox_id} is not failed or unmatched (or does not exist)")
    click.echo(f"event {inbox_id} re-queued")


# --- simulate and fake: each provider's own commands (receiver/providers/registry.py) -------


def print_sent(sent: list[Any]) -> None:
    """What a simulation sent, one line each; exit code 1 when any answer was a 4xx/5xx."""
    for item in sent:
        click.echo(f"{item.what}: {item.method} {item.url} -> {item.status} {item.answer}")
    if any(item.status >= 400 for item in sent):
        sys.exit(1)


def run_simulation(run: Callable[[Any], Awaitable[list[Any]]]) -> list[Any]:
    """For a provider's ``simulate`` command: ``run(ctx)`` on the configured database; a
    refusal of ours or a signback that cannot be reached ends it with one line."""
    import httpx

    from receiver.errors import SignbackError

    try:
        return _run(_with_context(_settings(), run))
    except SignbackError as exc:
        _fail(str(exc))
    except httpx.HTTPError as exc:
        _fail(f"could not reach signback: {type(exc).__name__}: {exc}")
    return []


class ProviderCommands(click.Group):
    """A group whose subcommands are the installed providers' (``fake_command`` or
    ``simulate_command`` of each ProviderPackage), found when the group is used."""

    def __init__(self, *args: Any, attribute: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attribute = attribute

    def _packages(self) -> dict[str, Callable[[], click.Command]]:
        from receiver.providers.registry import discover

        try:
            packages = discover()
        except ConfigurationError as exc:
            _fail(str(exc))
            raise
        factories = {name: getattr(package, self.attribute) for name, package in packages.items()}
        return {name: factory for name, factory in factories.items() if factory is not None}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._packages())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        factory = self._packages().get(cmd_name)
        return factory() if factory is not None else None


@main.group(cls=ProviderCommands, attribute="simulate_command")
def simulate() -> None:
    """Send realistic sample callbacks for a registered request (e.g. through your tunnel)."""


@main.group(cls=ProviderCommands, attribute="fake_command")
def fake() -> None:
    """Run a provider emulator (for tests and demos; never in production)."""


# --- downstream endpoints (receiver/admin/endpoints_cli.py) ------------------------------

from receiver.admin.endpoints_cli import endpoints as _endpoints  # noqa: E402

main.add_command(_endpoints)

# --- the archive (receiver/archive/cli.py) ------------------------------------------------

from receiver.archive.cli import documents as _documents  # noqa: E402

main.add_command(_documents)


if __name__ == "__main__":  # pragma: no cover
    main()
