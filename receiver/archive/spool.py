"""Stream a download to a file with a bounded buffer, hashing and measuring as it goes.

The bytes go to a temporary file in the storage's spool directory (for local storage, the
archive directory's own ``.spool/``, so that the final rename stays on one file system)
one chunk at a time: memory holds one chunk, whatever the file's size. The file is synced
before anyone may rename or upload it, so a file that reaches its final name is whole. A
download cut short (an exception, a killed process) leaves at most a ``.partial`` file that
nothing records; :func:`sweep` removes old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from receiver.archive.pdf import PDF_MAGIC

PDF = "application/pdf"
# How long a leftover .partial file is kept (it may belong to a download still running in
# another process).
STALE_PARTIAL_SECONDS = 6 * 3600


class NotAcceptable(Exception):
    """What was downloaded cannot be archived as it is (too large, not what was promised).
    ``may_pass``: another download may be fine (an error page served with a 200)."""

    def __init__(self, message: str, *, may_pass: bool = False) -> None:
        super().__init__(message)
        self.may_pass = may_pass


@dataclass(frozen=True, slots=True)
class Spooled:
    path: Path  # the synced temporary file
    size: int
    sha256: str  # hex


async def spool(
    chunks: AsyncIterator[bytes],
    directory: Path,
    *,
    media_type: str,
    max_bytes: int,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> Spooled:
    """Write ``chunks`` to a new file under ``directory``; check the size bound and, for a
    PDF, the ``%PDF-`` magic. Raises :class:`NotAcceptable` (the file is removed), or what
    the stream raised (likewise).

    ``pace`` is awaited after each chunk: the worker passes the governor's turn, so that a
    backlog of large downloads (reading, hashing) yields the event loop to the callbacks'
    acknowledgements during a flood, like the rest of the background work
    (receiver/loadshare.py). One action is one claim, and a claim's turn alone would let a
    whole file through at once."""
    path = directory / f"{int(time.time())}-{secrets.token_hex(8)}.partial"
    handle = await asyncio.to_thread(_create, path)
    digest = hashlib.sha256()
    size = 0
    head = b""
    done = False
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if size > max_bytes:
                raise NotAcceptable(f"larger than SIGNBACK_ARCHIVE_MAX_BYTES ({max_bytes} bytes)")
            if len(head) < len(PDF_MAGIC):
                head += chunk[: len(PDF_MAGIC) - len(head)]
                if media_type == PDF and len(head) == len(PDF_MAGIC) and head != PDF_MAGIC:
                    raise NotAcceptable(
                        f"not a PDF: it starts with {head!r}, not %PDF-", may_pass=True
                    )
            digest.update(chunk)
            handle.write(chunk)  # to the page cache: microseconds for a chunk
            if pace is not None:
                await pace()
        if media_type == PDF and head != PDF_MAGIC:
            raise NotAcceptable(
                f"not a PDF: {size} bytes, without %PDF- at the start", may_pass=True
            )
        handle.flush()
        await asyncio.to_thread(os.fsync, handle.fileno())  # the slow part, off the loop
        done = True
    finally:
        handle.close()
        if not done:
            with contextlib.suppress(OSError):
                path.unlink()
    return Spooled(path, size, digest.hexdigest())


def _create(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def sweep(directory: Path, *, now: float, older_than: float = STALE_PARTIAL_SECONDS) -> int:
    """Remove ``.partial`` files left by downloads that never finished; how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for leftover in directory.glob("*.partial"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > older_than:
                leftover.unlink()
                removed += 1
    return removed
