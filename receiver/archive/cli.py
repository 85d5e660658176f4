"""``signback documents list|get``: the archive, against the database and the storage
directly (the API's ``/api/requests/{id}/documents`` without a running server)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import click


@click.group()
def documents() -> None:
    """The archive: a completed request's signed PDF and the provider's evidence."""


@documents.command("list")
@click.argument("request_id", type=int)
def documents_list(request_id: int) -> None:
    """The request's archived files (name, kind, size, SHA-256, a signed download link)."""
    from receiver import cli
    from receiver.archive.views import document_json
    from receiver.store import documents as store
    from receiver.store import requests

    async def work(ctx: Any) -> list[dict[str, Any]] | None:
        if await requests.get(ctx.db, request_id) is None:
            return None
        now = ctx.clock()
        found = await store.for_request(ctx.db, request_id)
        return [document_json(ctx.settings, d, now=now) for d in found]

    items = cli._run(cli._with_context(cli._settings(), work))
    if items is None:
        cli._fail(f"no request with id {request_id}")
    cli._print_json({"items": items})


@documents.command("get")
@click.argument("request_id", type=int)
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default="-",
    help="Where to write the file (default: standard output).",
)
def documents_get(request_id: int, name: str, output: str) -> None:
    """Write one archived file, checked against its recorded SHA-256 as it is read."""
    from receiver import cli
    from receiver.archive.step import storage_of
    from receiver.store import documents as store

    async def work(ctx: Any) -> str | None:
        document = await store.get(ctx.db, request_id, name)
        if document is None:
            return f"request {request_id} has no archived file named {name!r}"
        if document.purged_at is not None:
            return f"{name} was purged from the archive by retention"
        digest = hashlib.sha256()
        target = sys.stdout.buffer if output == "-" else Path(output).open("wb")  # noqa: SIM115, ASYNC230
        try:
            async for chunk in storage_of(ctx).read(document.storage_key):
                digest.update(chunk)
                target.write(chunk)
        except FileNotFoundError:
            return f"{name} is recorded but missing from the archive's storage"
        finally:
            if target is not sys.stdout.buffer:
                target.close()
        if digest.hexdigest() != document.sha256:
            return f"{name} read back with SHA-256 {digest.hexdigest()}, not {document.sha256}"
        return None

    problem = cli._run(cli._with_context(cli._settings(), work))
    if problem is not None:
        cli._fail(problem, code=1)


@documents.command("archive")
@click.argument("request_ids", type=int, nargs=-1, required=True)
def documents_archive(request_ids: tuple[int, ...]) -> None:
    """Queue the archive action for completed requests (e.g. completed before the archive
    existed); a running worker archives them. Once per request, like the pipeline's."""
    from receiver import cli
    from receiver.archive import ARCHIVE_KEY, ARCHIVE_OPERATION
    from receiver.model import Action, RequestState
    from receiver.store import outbox, requests

    async def work(ctx: Any) -> list[str]:
        problems: list[str] = []
        for request_id in request_ids:
            row = await requests.get(ctx.db, request_id)
            if row is None:
                problems.append(f"{request_id}: no such request")
                continue
            request = requests.from_row(row)
            provider = ctx.providers.get(request.provider)
            if request.state is not RequestState.COMPLETED:
                problems.append(f"{request_id}: is {request.state.value}, not completed")
                continue
            if provider is None or provider.documents is None:
                problems.append(f"{request_id}: {request.provider} has no documents to archive")
                continue
            action = Action(ARCHIVE_OPERATION, {}, key=ARCHIVE_KEY)
            async with ctx.db.transaction() as tx:
                queued = await outbox.insert_actions(
                    tx, request_id, [action], now=ctx.clock(), source_inbox_id=None
                )
            click.echo(f"{request_id}: {'queued' if queued else 'already queued before'}")
        return problems

    problems = cli._run(cli._with_context(cli._settings(), work))
    if problems:
        cli._fail("\n".join(problems), code=1)
