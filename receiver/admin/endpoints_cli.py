"""``signback endpoints …``: the admin API's endpoint calls, against the database directly.

The same checks and answers as ``/api/endpoints`` (receiver/outbox/downstream/manage.py): a
problem ends the command with one line per field and exit code 2, as does an unknown
endpoint or request id (what the user must fix, like every signback command; 1 is for what
failed). A running worker sends what these commands queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from receiver.cli_types import ROW_ID
from receiver.store.statuses import ActionStatus

T = TypeVar("T")


def _call(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(ctx)`` on the configured database, as the other commands do."""
    from receiver import cli
    from receiver.errors import ConfigurationError

    try:
        return cli._run(cli._with_context(cli._settings(), work))
    except ConfigurationError as exc:
        cli._fail(str(exc))
        raise


def _fail(message: str, code: int = 2) -> None:
    from receiver import cli

    cli._fail(message, code)


def _print(value: Any) -> None:
    from receiver import cli

    cli._print_json(value)


def _refuse(problems: list[dict[str, str]]) -> None:
    _fail("invalid endpoint:\n  " + "\n  ".join(f"{p['field']}: {p['message']}" for p in problems))


def _missing(endpoint_id: int) -> None:
    _fail(f"no endpoint with id {endpoint_id}")


@click.group()
def endpoints() -> None:
    """Downstream endpoints: where signback pushes signed events (Standard Webhooks)."""


@endpoints.command("add")
@click.option("--url", required=True, help="Where to POST the events (http or https).")
@click.option("--description", default="", help="What it is, for people.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    help="An event type to receive (repeatable; default: every signature_request.* type).",
)
@click.option(
    "--provider", "providers", multiple=True, help="Only this provider's (repeatable; default all)."
)
@click.option("--include-raw", is_flag=True, help="Add the provider's own payload (data.raw).")
def endpoints_add(
    url: str,
    description: str,
    kinds: tuple[str, ...],
    providers: tuple[str, ...],
    include_raw: bool,
) -> None:
    """Add an endpoint; prints it with its signing secret (shown this once)."""
    from receiver.outbox.downstream import manage

    data = {
        "url": url,
        "description": description,
        "kinds": list(kinds),
        "providers": list(providers),
        "include_raw": include_raw,
    }

    async def run(ctx: Any) -> dict[str, Any] | list[dict[str, str]]:
        fields, problems = manage.endpoint_problems(ctx, data)
        problems = problems or await manage.resolved_problems(ctx, fields["url"])
        if problems:
            return problems
        endpoint, secret = await manage.create(ctx, fields)
        return manage.endpoint_json(endpoint, secret=secret)

    answer = _call(run)
    if isinstance(answer, list):
        _refuse(answer)
    _print(answer)


@endpoints.command("list")
def endpoints_list() -> None:
    """Every endpoint (not its secret)."""
    from receiver.outbox.downstream import endpoints as store
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> list[dict[str, Any]]:
        return manage.summary(await store.listing(ctx.db))

    _print(_call(run))


@endpoints.command("show")
@click.argument("endpoint_id", type=ROW_ID)
def endpoints_show(endpoint_id: int) -> None:
    """An endpoint, with its deliveries counted by status."""
    from receiver.outbox.downstream import endpoints as store
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> dict[str, Any] | None:
        endpoint = await store.get(ctx.db, endpoint_id)
        if endpoint is None:
            return None
        counts = await manage.delivery_counts(ctx, endpoint_id)
        return manage.endpoint_json(endpoint, counts=counts)

    answer = _call(run)
    if answer is None:
        _missing(endpoint_id)
    _print(answer)


@endpoints.command("update")
@click.argument("endpoint_id", type=ROW_ID)
@click.option("--url", default=None)
@click.option("--description", default=None)
@click.option("--kind", "kinds", multiple=True, help="Replaces the event types (repeatable).")
@click.option("--all-kinds", is_flag=True, help="Back to the default (every request event).")
@click.option("--provider", "providers", multiple=True, help="Replaces the providers.")
@click.option("--all-providers", is_flag=True, help="Back to every provider.")
@click.option("--include-raw/--no-include-raw", default=None)
def endpoints_update(
    endpoint_id: int,
    url: str | None,
    description: str | None,
    kinds: tuple[str, ...],
    all_kinds: bool,
    providers: tuple[str, ...],
    all_providers: bool,
    include_raw: bool | None,
) -> None:
    """Change an endpoint's URL, description, filters or include-raw."""
    data: dict[str, Any] = {}
    if url is not None:
        data["url"] = url
    if description is not None:
        data["description"] = description
    if kinds or all_kinds:
        data["kinds"] = list(kinds)
    if providers or all_providers:
        data["providers"] = list(providers)
    if include_raw is not None:
        data["include_raw"] = include_raw
    _patch(endpoint_id, data)


def _patch(endpoint_id: int, data: dict[str, Any]) -> None:
    from receiver.outbox.downstream import endpoints as store
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> dict[str, Any] | list[dict[str, str]] | None:
        if await store.get(ctx.db, endpoint_id) is None:
            return None
        fields, problems = manage.endpoint_problems(ctx, data, patch=True)
        if not problems and "url" in fields:
            problems = await manage.resolved_problems(ctx, fields["url"])
        if problems:
            return problems
        updated = await manage.update(ctx, endpoint_id, fields)
        return None if updated is None else manage.endpoint_json(updated)

    answer = _call(run)
    if answer is None:
        _missing(endpoint_id)
    if isinstance(answer, list):
        _refuse(answer)
    _print(answer)


@endpoints.command("disable")
@click.argument("endpoint_id", type=ROW_ID)
def endpoints_disable(endpoint_id: int) -> None:
    """Stop deliveries to it; they wait until it is enabled again."""
    from receiver.outbox.downstream.endpoints import EndpointStatus

    _patch(endpoint_id, {"status": EndpointStatus.DISABLED})


@endpoints.command("enable")
@click.argument("endpoint_id", type=ROW_ID)
def endpoints_enable(endpoint_id: int) -> None:
    """Deliver to it again (what waited goes at once)."""
    from receiver.outbox.downstream.endpoints import EndpointStatus

    _patch(endpoint_id, {"status": EndpointStatus.ENABLED})


@endpoints.command("rotate-secret")
@click.argument("endpoint_id", type=ROW_ID)
def endpoints_rotate(endpoint_id: int) -> None:
    """A new signing secret (printed this once); the old one signs too for a while."""
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> dict[str, Any] | None:
        rotated = await manage.rotate(ctx, endpoint_id)
        return None if rotated is None else manage.endpoint_json(rotated[0], secret=rotated[1])

    answer = _call(run)
    if answer is None:
        _missing(endpoint_id)
    _print(answer)


@endpoints.command("test")
@click.argument("endpoint_id", type=ROW_ID)
def endpoints_test(endpoint_id: int) -> None:
    """Queue a signback.test event to it."""
    from receiver.outbox.downstream import endpoints as store
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> dict[str, Any] | str | None:
        endpoint = await store.get(ctx.db, endpoint_id)
        if endpoint is None:
            return None
        if endpoint.status != store.EndpointStatus.ENABLED:
            return f"the endpoint is {endpoint.status}; enable it first"
        emitted = await manage.send_test(ctx, endpoint)
        assert emitted is not None
        return {"event": emitted.public_id, "type": emitted.event_type, "queued": 1}

    answer = _call(run)
    if answer is None:
        _missing(endpoint_id)
    if isinstance(answer, str):
        _fail(answer)
    _print(answer)


@endpoints.command("replay")
@click.argument("endpoint_id", type=ROW_ID)
@click.option("--since", default=None, help="RFC 3339 time (2026-12-01T10:00:00Z) or unix seconds.")
@click.option("--until", default=None, help="RFC 3339 time or unix seconds (not included).")
@click.option("--request-id", type=ROW_ID, default=None, help="Only this request's events.")
def endpoints_replay(
    endpoint_id: int, since: str | None, until: str | None, request_id: int | None
) -> None:
    """Send stored events again (same webhook-id as the first time)."""
    from receiver.outbox.downstream import endpoints as store
    from receiver.outbox.downstream import manage

    data: dict[str, Any] = {"request_id": request_id}
    for name, value in (("since", since), ("until", until)):
        data[name] = float(value) if value and _is_number(value) else value

    async def run(ctx: Any) -> dict[str, Any] | list[dict[str, str]] | None:
        endpoint = await store.get(ctx.db, endpoint_id)
        if endpoint is None:
            return None
        window, problems = manage.replay_window(data)
        if problems:
            return problems
        done = await manage.replay(ctx, endpoint, **window)
        problems = await manage.unknown_request(ctx, done, window["request_id"])
        if problems:
            return problems
        return {"queued": done.queued, "events": done.events, "truncated": done.truncated}

    answer = _call(run)
    if answer is None:
        _missing(endpoint_id)
    if isinstance(answer, list):
        _fail("invalid replay:\n  " + "\n  ".join(f"{p['field']}: {p['message']}" for p in answer))
    _print(answer)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@endpoints.command("retry-dead")
@click.argument("endpoint_id", type=ROW_ID)
def endpoints_retry_dead(endpoint_id: int) -> None:
    """Re-queue every dead delivery of this endpoint."""
    from receiver.outbox.downstream import endpoints as store
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> int | None:
        if await store.get(ctx.db, endpoint_id) is None:
            return None
        return await manage.retry_dead(ctx, endpoint_id)

    answer = _call(run)
    if answer is None:
        _missing(endpoint_id)
    click.echo(f"{answer} dead deliveries re-queued")


@endpoints.command("deliveries")
@click.argument("endpoint_id", type=ROW_ID)
@click.option("--status", default=None, type=click.Choice([s.value for s in ActionStatus]))
@click.option("--limit", default=50, show_default=True)
def endpoints_deliveries(endpoint_id: int, status: str | None, limit: int) -> None:
    """Its deliveries, newest first, with their attempts."""
    from receiver.outbox.downstream import endpoints as store
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> list[dict[str, Any]] | None:
        if await store.get(ctx.db, endpoint_id) is None:
            return None
        return await manage.deliveries(
            ctx, endpoint_id, status=status, before_id=None, limit=max(1, min(limit, 500))
        )

    answer = _call(run)
    if answer is None:
        _missing(endpoint_id)
    _print(answer)


@endpoints.command("delete")
@click.argument("endpoint_id", type=ROW_ID)
def endpoints_delete(endpoint_id: int) -> None:
    """Delete it; its waiting deliveries are skipped."""
    from receiver.outbox.downstream import manage

    async def run(ctx: Any) -> bool:
        return await manage.delete(ctx, endpoint_id)

    if not _call(run):
        _missing(endpoint_id)
    click.echo(f"endpoint {endpoint_id} deleted")
