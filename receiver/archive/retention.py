"""Retention, run by the worker: both off by default (docs/archive.md).

- SIGNBACK_ARCHIVE_RETENTION_DAYS: archived files older than that are deleted from the
  storage; their rows stay, with ``purged_at`` set (the checksum remains the record of
  what was signed, and the API says the file was purged: 410).
- SIGNBACK_INBOX_RETENTION_DAYS: the raw bodies of callbacks processed longer ago than
  that are emptied (``body_purged_at`` set); the normalized facts (kind, states, event id,
  note) and so the timeline stay. Unmatched and failed callbacks keep their bodies: they
  may still be processed.

Also removes ``.partial`` files left by downloads that never finished. Each pass works in
batches, so a first pass over a large backlog does not hold the database for long.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from receiver.archive import spool
from receiver.archive.step import storage_of
from receiver.backoff import sleep_or_stop
from receiver.context import AppContext
from receiver.logs import get_logger
from receiver.store import documents

log = get_logger("signback.retention")

DAY = 24 * 3600.0
BATCH = 500
INTERVAL_SECONDS = 15 * 60.0


@dataclass(frozen=True, slots=True)
class Purged:
    files: int
    bodies: int
    partials: int


def enabled(ctx: AppContext) -> bool:
    s = ctx.settings
    return s.archive_enabled or s.inbox_retention_days is not None


async def purge_files(ctx: AppContext, *, now: float) -> int:
    days = ctx.settings.archive_retention_days
    if days is None:
        return 0
    storage = storage_of(ctx)
    purged = 0
    while True:
        due = await documents.older_than(ctx.db, cutoff=now - days * DAY, limit=BATCH)
        for document in due:
            await storage.delete(document.storage_key)
            await documents.mark_purged(ctx.db, document.id, now=now)
            purged += 1
        if len(due) < BATCH:
            return purged


async def purge_bodies(ctx: AppContext, *, now: float) -> int:
    days = ctx.settings.inbox_retention_days
    if days is None:
        return 0
    purged = 0
    while True:
        changed = await ctx.db.execute(
            "UPDATE inbox SET body = :empty, body_purged_at = :now WHERE id IN (SELECT id FROM"
            " inbox WHERE status = 'processed' AND processed_at < :cutoff AND body_purged_at"
            " IS NULL ORDER BY id LIMIT :batch)",
            {"empty": b"", "now": now, "cutoff": now - days * DAY, "batch": BATCH},
        )
        purged += changed
        if changed < BATCH:
            return purged


async def purge_once(ctx: AppContext) -> Purged:
    now = ctx.clock()
    partials = 0
    if ctx.settings.archive_enabled:
        directory = storage_of(ctx).spool_dir
        partials = await asyncio.to_thread(spool.sweep, directory, now=now)
    return Purged(
        files=await purge_files(ctx, now=now),
        bodies=await purge_bodies(ctx, now=now),
        partials=partials,
    )


async def run(ctx: AppContext, stopping: asyncio.Event) -> None:
    """Purge now, then every quarter of an hour, until stopped."""
    while not stopping.is_set():
        try:
            purged = await purge_once(ctx)
            if purged.files or purged.bodies or purged.partials:
                log.info(
                    "retention purged",
                    files=purged.files,
                    bodies=purged.bodies,
                    partial_downloads=purged.partials,
                )
        except Exception as exc:
            log.warning("retention pass failed", error=f"{type(exc).__name__}: {exc}")
        await sleep_or_stop(stopping, INTERVAL_SECONDS)
