"""Is a request's archive whole? Read back from the storage and checked against the record.

Used before anything destroys the provider's copy (a provider's optional delete after
archiving): each recorded file is read back from the storage and its size and SHA-256
compared with the row. Nothing is trusted that was not read back.
"""

from __future__ import annotations

import hashlib

from receiver.archive.step import storage_of
from receiver.context import AppContext
from receiver.store import documents


async def archive_problem(ctx: AppContext, request_id: int, *, names: set[str]) -> str | None:
    """None when every file in ``names`` is recorded for the request and reads back from
    the storage with its recorded size and checksum; otherwise what is wrong."""
    recorded = {d.name: d for d in await documents.for_request(ctx.db, request_id)}
    storage = storage_of(ctx)
    for name in sorted(names):
        document = recorded.get(name)
        if document is None:
            return f"{name} is not archived"
        if document.purged_at is not None:
            return f"{name} was purged from the archive"
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in storage.read(document.storage_key):
                digest.update(chunk)
                size += len(chunk)
        except FileNotFoundError:
            return f"{name} is recorded but missing from the storage"
        if size != document.size or digest.hexdigest() != document.sha256:
            return f"{name} in the storage does not match its recorded size and SHA-256"
    return None
