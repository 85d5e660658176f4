"""The rejection log's writer: refused callbacks, kept off the intake's hot path.

A refusal costs the intake one append to a bounded list (:meth:`RejectionLog.record`): no
redaction, no encoding, no write. Once a second (:meth:`RejectionLog.run`) the list is
turned into rows (headers redacted, the body's first bytes escaped) and written in one
transaction that also trims the table to its newest ``SIGNBACK_REJECTION_LOG_ROWS`` rows.
In a flood of forged callbacks at most ``buffer`` refusals a second are kept (the rest are
counted, and the count logged): the disk holds a fixed number of rows, and the intake
spends no more on a forged callback than it did before the log existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from receiver import jsonutil
from receiver.clock import Clock
from receiver.errors import CallbackRejected, one_line
from receiver.intake.middleware import loggable_path
from receiver.intake.router import Callback
from receiver.logs import get_logger, redact_tokens
from receiver.store import rejections as store
from receiver.store.db.base import Database
from receiver.store.storable import storable

log = get_logger("signback.intake")

BODY_HEAD_BYTES = 256
REASON_CHARS = 2000
# What a stored body head shows of a control character (a newline and a tab stay).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# One refusal as the intake hands it over: time, route, provider, status, reason, details,
# remote address, headers (not yet redacted), the body's first bytes (None: never read; only
# those are kept, so that a flood of large bodies holds no memory), its length or the
# declared one.
Pending = tuple[
    float, str, str | None, int, str, Mapping[str, object], str | None, Mapping[str, str],
    bytes | None, int | None,
]  # fmt: skip


def body_head(body: bytes) -> str:
    """The first bytes of a body as text anyone can read: undecodable bytes as ``\\xNN``,
    control characters too; bounded."""
    text = body[:BODY_HEAD_BYTES].decode("utf-8", "backslashreplace")
    return storable(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


def _length(body: bytes | None, declared: str | None) -> int | None:
    if body is not None:
        return len(body)
    if declared is not None and declared.isascii() and declared.isdigit() and len(declared) < 19:
        return int(declared)
    return None


class RejectionLog:
    """Buffered, batched, bounded (see the module docstring). ``cap`` 0 turns it off."""

    def __init__(
        self,
        db: Database,
        redact: Callable[[Mapping[str, str]], dict[str, str]],
        *,
        cap: int,
        clock: Clock,
        buffer: int = 1000,
        interval: float = 1.0,
    ) -> None:
        self.db = db
        self.redact = redact
        self.cap = cap
        self.clock = clock
        self.buffer = buffer
        self.interval = interval
        self.dropped = 0  # refusals not kept since the last flush (the buffer was full)
        self._pending: list[Pending] = []
        self._task: asyncio.Task[None] | None = None

    def record(
        self,
        exc: CallbackRejected,
        *,
        provider: str | None,
        call: Callback,
        body: bytes | None = None,
    ) -> None:
        """Note one refusal (cheap: the work is done by the next flush)."""
        if self.cap <= 0:
            return
        if len(self._pending) >= self.buffer:
            self.dropped += 1
            return
        self._pending.append(
            (
                self.clock(),
                call.path,
                provider,
                exc.status_code,
                exc.message,
                exc.details,
                call.client,
                call.headers,
                None if body is None else body[:BODY_HEAD_BYTES],
                _length(body, call.headers.get("content-length")),
            )
        )

    def rows(self, pending: list[Pending]) -> list[dict[str, Any]]:
        out = []
        for at, path, provider, status, reason, details, remote, headers, head, length in pending:
            out.append(
                {
                    "received_at": at,
                    "route": storable(loggable_path(path), 200),
                    "provider": provider,
                    "status": status,
                    "reason": storable(redact_tokens(reason), REASON_CHARS),
                    "details": jsonutil.dumps_view(dict(details)).decode(),
                    "remote": None if remote is None else storable(remote, 64),
                    "headers": jsonutil.dumps_view(self.redact(headers)).decode(),
                    "body_length": length,
                    "body_head": None if head is None else body_head(head),
                }
            )
        return out

    async def flush(self) -> int:
        """Write what is pending; returns how many rows were written."""
        pending, self._pending = self._pending, []
        dropped, self.dropped = self.dropped, 0
        if dropped:
            log.warning("refused callbacks not kept in the rejection log (flood)", count=dropped)
        if not pending:
            return 0
        await store.write(self.db, self.rows(pending), cap=self.cap)
        return len(pending)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: these refusals are not kept
                log.error("could not write the rejection log", error=one_line(exc))

    def start(self) -> None:
        if self.cap > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="rejection-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
