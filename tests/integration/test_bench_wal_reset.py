"""``python -m bench.wal_reset`` measures real group commits: every row it times is stored."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bench.wal_reset import flood
from receiver.store.migrate import upgrade


def test_every_timed_row_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "reset.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    rows, took, held, waits = asyncio.run(flood(url, rate=3000, seconds=0.5))
    assert took >= 0.5
    assert rows > 0
    assert rows % 32 == 0
    assert len(waits) == rows
    assert all(w > 0 for w in waits)
    assert held == []  # far from the 256 MiB that forces a reset
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM inbox").fetchone()[0] == rows
