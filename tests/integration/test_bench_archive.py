"""The archive bench's backlog is what the pipeline queues on a confirmed completion: each
request completed with one ``signback.archive`` action (key ``archive``), which signback's
own dispatcher then runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench import stores
from bench.archive import archived, queue_archive
from receiver.archive import ARCHIVE_KEY, ARCHIVE_OPERATION


def test_the_backlog_is_one_archive_action_per_completed_request(tmp_path: Path) -> None:
    url = stores.sqlite_url(tmp_path / "bench.db")
    stores.migrate(url)
    targets = stores.register(url, "okdokument", 5, secret_key="k" * 40, seed="s")
    queue_archive(url, targets[2:])
    with sqlite3.connect(tmp_path / "bench.db") as db:
        states = dict(db.execute("SELECT id, state FROM signature_requests").fetchall())
        actions = db.execute(
            "SELECT request_id, action_key, operation, status, lane FROM outbox ORDER BY id"
        ).fetchall()
    assert [states[t.request_id] for t in targets] == ["registered"] * 2 + ["completed"] * 3
    assert actions == [
        (t.request_id, ARCHIVE_KEY, ARCHIVE_OPERATION, "pending", "provider") for t in targets[2:]
    ]
    assert archived(url) == 0
