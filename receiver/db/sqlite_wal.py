"""WAL checkpoints for the SQLite driver, on a thread of their own (see :class:`Checkpointer`)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable

CHECKPOINT_INTERVAL = 0.1  # seconds between the background thread's checkpoints
# Once the WAL holds this many pages (64 MiB), it is started over: see Checkpointer.
WAL_RESET_PAGES = 16384
# ... once at most this many pages are left to copy (the rest is copied between writes).
RESET_RESIDUE_PAGES = 512
CATCH_UP_INTERVAL = 0.002  # seconds between background checkpoints while catching up


class Checkpointer:
    """WAL checkpoints on a thread of their own, off the event loop.

    Left to itself, SQLite checkpoints inside whichever COMMIT pushes the WAL past 1,000
    pages: that commit copies 4 MiB into the database file and syncs it, holding the event
    loop (and every acknowledgement waiting on it) for milliseconds, and the I/O waits were
    a third of the intake's time per callback. So no connection of the driver checkpoints on
    its own (``wal_autocheckpoint=0``); this thread copies the WAL into the database with
    PASSIVE checkpoints (they never block readers or writers) ten times a second.

    The WAL must also start over now and then: a long one makes every page lookup slower
    and fills the disk. SQLite starts it over only once everything in it has been copied,
    which a background checkpoint never achieves while commits keep coming. So once the WAL
    passes ``WAL_RESET_PAGES``, this thread checkpoints back to back until little is left to
    copy, then raises :attr:`reset_wanted` and calls ``wanted``: the writer thread
    (:mod:`receiver.db.sqlite_writer`), between two writes, calls :meth:`finish_reset` on its
    own connection, and its next write starts the WAL over. That last copy and its fsyncs
    (several milliseconds here, more on a busy disk) never run on the event loop.
    """

    def __init__(self, path: str, wanted: Callable[[], object]) -> None:
        self._path = path
        self._wanted = wanted  # thread-safe: called from this thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self.wal_pages = 0  # the WAL's size at the last background checkpoint
        self.reset_wanted = False  # set here, cleared by finish_reset
        self.resets = 0  # WAL restarts so far

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def finish_reset(self, conn: sqlite3.Connection) -> None:
        """Copy what is left, with no write in progress; the next write restarts the WAL.
        Called by the writer thread (or, without one, by the serving connection)."""
        try:
            with contextlib.suppress(sqlite3.Error):  # another process's write: next time
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if row is not None and int(row[1]) == int(row[2]):
                    self.resets += 1
                    self.wal_pages = 0
        finally:
            self.reset_wanted = False

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        interval = CHECKPOINT_INTERVAL
        try:
            while not self._stop.wait(interval):
                interval = CHECKPOINT_INTERVAL
                if self.reset_wanted:
                    continue  # the writer has not got round to it yet
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    continue  # locked by another checkpoint: the next round catches up
                if row is None:
                    continue
                # (busy, pages in the WAL, pages copied): the WAL grew during the copy.
                self.wal_pages = pages = int(row[1])
                if pages > WAL_RESET_PAGES:
                    if pages - int(row[2]) <= RESET_RESIDUE_PAGES:
                        self.reset_wanted = True
                        self._wanted()
                    else:
                        interval = CATCH_UP_INTERVAL
        finally:
            conn.close()
