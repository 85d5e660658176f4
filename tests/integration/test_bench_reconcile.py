"""``python -m bench.reconcile`` times real work: every request it times is read once and
completed through the reconciler."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.reconcile import run_one
from receiver.store.migrate import upgrade
from tests.harness import running_okdokument


def test_each_timed_request_is_read_once_and_completed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'reconcile.db'}"
    upgrade(url)
    with running_okdokument(drop_callbacks_percent=100) as (okd_url, fake):
        took, used, reads = asyncio.run(run_one(url, okd_url, 20, 8))
        documents = {d.document_id: d.state for d in fake.documents.values()}
    assert took > 0
    assert used > 0
    assert reads == 20
    assert documents == {f"doc-{i}": "signed" for i in range(20)}
    assert fake.dropped_callbacks == 20
