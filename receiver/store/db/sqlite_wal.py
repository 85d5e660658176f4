"""WAL checkpoints for the SQLite driver, on a thread of their own (see :class:`Checkpointer`)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable

from receiver.logs import get_logger

log = get_logger("signback.sqlite")

CHECKPOINT_INTERVAL = 0.1  # seconds between the background thread's checkpoints
# Once the WAL holds this many pages (64 MiB), it is started over at the next lull in the
# writes (see Checkpointer) ...
WAL_RESET_PAGES = 16384
# ... and at once, lull or not, beyond this many (256 MiB).
WAL_FORCE_RESET_PAGES = 65536
# A lull: this long without a callback to write.
RESET_LULL_SECONDS = 0.25
# The reset waits until at most this many pages are left to copy (the rest is copied then).
RESET_RESIDUE_PAGES = 512
CATCH_UP_INTERVAL = 0.002  # seconds between background checkpoints while catching up

# fdatasync where there is one (Linux); fsync elsewhere (macOS).
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class Checkpointer:
    """WAL checkpoints on a thread of their own, off the event loop.

    Left to itself, SQLite checkpoints inside whichever COMMIT pushes the WAL past 1,000
    pages: that commit copies 4 MiB into the database file and syncs it, holding the event
    loop (and every acknowledgement waiting on it) for milliseconds, and the I/O waits were
    a third of the intake's time per callback. So no connection of the driver checkpoints on
    its own (``wal_autocheckpoint=0``); this thread copies the WAL into the database with
    PASSIVE checkpoints (they never block readers or writers) ten times a second.

    SQLite syncs the database file only at the end of a checkpoint that copied everything,
    so the pages the PASSIVE checkpoints copy pile up unsynced in the OS's cache until then.
    This thread therefore syncs the file itself (``fdatasync``) after each checkpoint that
    copied anything: durability is unchanged (a sync more never hurts, and SQLite's own
    sync still comes before the WAL may start over), and the sync at the end of a complete
    checkpoint finds little left to do. The file descriptor it syncs through is the
    driver's, opened before and closed after all of the process's connections: closing a
    descriptor of a database file drops every POSIX lock the process holds on it, including
    the ones that tell other processes this one is using the database.

    The WAL must also start over now and then, or it fills the disk. SQLite starts it over
    only once everything in it has been copied, which a background checkpoint never
    achieves while commits keep coming: the last pages must be copied while nothing writes,
    with every acknowledgement waiting meanwhile. So once the WAL passes
    ``WAL_RESET_PAGES``, this thread checkpoints back to back until little is left to copy,
    then raises :attr:`reset_wanted` and calls ``wanted``: the driver
    (:mod:`receiver.store.db.sqlite`) takes its write lock at the next lull in the callbacks
    (``RESET_LULL_SECONDS`` without one), or at once should the WAL pass
    ``WAL_FORCE_RESET_PAGES``, and has :meth:`finish_reset` run on a thread meanwhile. That
    copy and its fsyncs never run on the event loop. (Before the syncs here, that final
    fsync flushed everything copied since the last reset: 6 ms on a small database, 35 ms
    on a large one. Pages already copied cost a lookup nothing: SQLite searches only the
    part of the WAL not yet copied, so a long WAL is a matter of disk space, not speed.)
    """

    def __init__(self, path: str, wanted: Callable[[], object], sync_fd: int | None = None) -> None:
        self._path = path
        self._wanted = wanted  # thread-safe: called from this thread
        self._sync_fd = sync_fd  # the database file, for syncing only (see above)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self.wal_pages = 0  # the WAL's size at the last background checkpoint
        self.reset_wanted = False  # set here, cleared by finish_reset
        self.resets = 0  # WAL restarts so far
        # Two checkpoints at once: the second would find the first's lock and do nothing.
        self._checkpointing = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def finish_reset(self, conn: sqlite3.Connection) -> None:
        """Copy what is left, with no write in progress; the next write restarts the WAL.
        Called on a thread while the driver holds its write lock."""
        try:
            with self._checkpointing, contextlib.suppress(sqlite3.Error):
                # Another process's write would leave it incomplete: then next time.
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                # (0, n, n): not blocked, and all n pages copied. (1, -1, -1) is a checkpoint
                # that could not run at all.
                if row is not None and int(row[0]) == 0 and int(row[1]) == int(row[2]):
                    self.resets += 1
                    self.wal_pages = 0
        finally:
            self.reset_wanted = False

    def reset_due(self, idle_seconds: float) -> bool:
        """Whether a reset should be finished now, no row having been written for
        ``idle_seconds``."""
        return self.reset_wanted and (
            idle_seconds >= RESET_LULL_SECONDS or self.wal_pages >= WAL_FORCE_RESET_PAGES
        )

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        interval = CHECKPOINT_INTERVAL
        copied_before = 0
        try:
            while not self._stop.wait(interval):
                interval = CHECKPOINT_INTERVAL
                try:
                    with self._checkpointing:
                        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if row is not None and int(row[2]) != copied_before:
                            self._sync()
                except (sqlite3.Error, OSError):
                    continue  # locked by another process's checkpoint: next round
                except Exception:  # never die: without this thread the WAL grows for ever
                    log.exception("WAL checkpoint failed; trying again")
                    continue
                if row is None:
                    continue
                # (busy, pages in the WAL, pages copied): the WAL grew during the copy.
                copied_before = int(row[2])
                self.wal_pages = pages = int(row[1])
                if pages > WAL_RESET_PAGES:
                    if pages - int(row[2]) > RESET_RESIDUE_PAGES:
                        interval = CATCH_UP_INTERVAL
                    elif not self.reset_wanted or pages >= WAL_FORCE_RESET_PAGES:
                        self.reset_wanted = True
                        self._wanted()
        finally:
            conn.close()

    def _sync(self) -> None:
        if self._sync_fd is not None:
            _datasync(self._sync_fd)
