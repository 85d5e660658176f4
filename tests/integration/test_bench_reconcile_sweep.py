"""``python -m bench.reconcile --sweep`` measures real work: every filled request has its
read queued once, the sample is read and completed, and the reads at the default budget
stay within it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.reconcile import settings_for
from bench.reconcile_sweep import most_in_window, run_sweep
from receiver.store.migrate import upgrade
from tests.harness import running_okdokument


def test_most_in_window_counts_a_sliding_window() -> None:
    assert most_in_window([], 1.0) == 0
    assert most_in_window([0.0, 0.5, 1.0, 1.4, 3.0], 1.0) == 3  # (0.4, 1.4]
    assert most_in_window([0.0, 1.0], 1.0) == 1  # a call a window older no longer counts


def test_a_small_sweep_queues_reads_each_sample_and_stays_within_the_budget(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    upgrade(url)
    with running_okdokument(drop_callbacks_percent=100) as (okd_url, _):
        base = settings_for(url, okd_url, 100)
        # The sample's part returns once its 30 requests are completed.
        swept = asyncio.run(run_sweep(base, 400, 30, 100, okd_url, windows=1))
    assert swept.queue_cpu_s > 0
    assert swept.read_cpu_s > 0
    assert swept.reads_per_minute == 120
    assert swept.reads_at_limit > 0
    assert swept.within_budget
    assert round(swept.sweep_hours * 60 * 120) == 400
