"""The console bench (python -m bench.console) at a size fit for CI: it fills a store,
signs in and times every page and every admin API query, each of which must answer 200
(the bench asserts it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import admin, console


def test_the_console_bench_runs_on_a_small_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nkept\n")
    assert (
        console.main(
            [
                *("--requests", "300", "--events", "1500", "--rounds", "1", "--samples", "2"),
                *("--docs", str(docs)),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for page in ("overview", "requests: one day", "request (timeline)", "failures"):
        assert f"| {page} |" in out
    for query in admin.QUERIES:  # each asked twice after its warm-up
        assert f"| {query[0]} | 2 |" in out
    written = docs.read_text()
    assert written.startswith("# Performance\n\nkept\n")
    assert "<!-- console:start -->" in written
    assert "300 requests and 1,500 events" in written
    assert "| deliveries: status | 2 |" in written


def test_p99_interpolates_between_the_slowest_samples() -> None:
    assert admin.p99([5.0]) == 5.0
    assert admin.p99([float(n) for n in range(1, 201)]) == pytest.approx(198.01)
