"""The console bench (python -m bench.console) at a size fit for CI: it fills a store,
signs in and times every page, each of which must answer 200 (the bench asserts it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import console


def test_the_console_bench_runs_on_a_small_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nkept\n")
    assert (
        console.main(
            ["--requests", "300", "--events", "1500", "--rounds", "1", "--docs", str(docs)]
        )
        == 0
    )
    out = capsys.readouterr().out
    for page in ("overview", "requests: one day", "request (timeline)", "failures"):
        assert f"| {page} |" in out
    written = docs.read_text()
    assert written.startswith("# Performance\n\nkept\n")
    assert "<!-- console:start -->" in written
    assert "300 requests and 1,500 events" in written
