"""The downstream bench scenario's figures and rows (bench/downstream.py), and its endpoint's
options; the scenario itself runs only under ``python -m bench``."""

from __future__ import annotations

import pytest

from bench.downstream import (
    IsolationRun,
    Sizes,
    arrival_rate,
    drain_rows,
    isolation_rows,
    window_rate,
)
from bench.endpoint import parse_delays
from bench.load import WrkResult
from bench.scenarios import SCENARIOS


def wrk(rps: float, p99: float) -> WrkResult:
    requests = int(rps * 10)
    return WrkResult(
        requests=requests,
        duration_s=10.0,
        sent=requests,
        n2xx=requests,
        accepted=requests,
        duplicates=0,
        other=0,
        wrapped=0,
        pool_size=0,
        errors={},
        latency_ms={"p50": 1.0, "p99": p99},
        raw={},
    )


def test_rates() -> None:
    assert arrival_rate([]) == 0.0
    assert arrival_rate([5.0]) == 0.0
    assert arrival_rate([10.0, 10.5, 11.0, 12.0]) == 1.5
    assert window_rate([1.0, 2.0, 2.5, 3.0, 9.0], 2.0, 3.0) == 2.0
    assert window_rate([1.0], 3.0, 3.0) == 0.0


def test_drain_rows_check_the_target_and_that_nothing_is_missing() -> None:
    met, complete = drain_rows(100_000, 612.4, 640.0, 630.0, 100_000)
    assert met.value == "612"
    assert met.baseline == "640 / 630"
    assert met.ratio == "0.96x"
    assert (met.target, met.verdict) == ("≥ 500/s", "ok")
    assert complete.verdict == "ok"
    missed, incomplete = drain_rows(5_000, 450.0, 640.0, 640.0, 4_990)
    assert missed.verdict == "MISS (-10%)"
    assert incomplete.verdict == "MISS (10 missing)"


def test_isolation_rows_compare_with_the_runs_before_and_after() -> None:
    fast = [
        IsolationRun(wrk(6000, 5.0), neighbour_rate=600, other_rate=600),
        IsolationRun(wrk(6200, 5.4), neighbour_rate=620, other_rate=610),
    ]
    slow = IsolationRun(wrk(5900, 5.3), neighbour_rate=590, other_rate=31)
    rps, p99, neighbour = isolation_rows(slow, fast)
    assert (rps.value, rps.baseline, rps.verdict) == ("5,900", "6,000 / 6,200", "ok")
    assert (p99.value, p99.verdict) == ("5.30 ms", "ok")
    assert (neighbour.value, neighbour.baseline, neighbour.verdict) == ("590", "600 / 620", "ok")
    assert (rps.target, p99.target) == ("≥ 0.9x", "≤ 1.1x")
    # Better beside a slow endpoint than beside a fast one is no miss.
    freer = IsolationRun(wrk(7000, 4.0), neighbour_rate=800, other_rate=31)
    assert all(r.verdict == "ok" for r in isolation_rows(freer, fast))
    starved = IsolationRun(wrk(3000, 40.0), neighbour_rate=100, other_rate=31)
    rps, p99, neighbour = isolation_rows(starved, fast)
    assert rps.verdict.startswith("MISS")
    assert p99.verdict.startswith("MISS")
    assert neighbour.verdict == "MISS (-84%)"
    invalid = IsolationRun(wrk(6000, 5.0), 600, 31, invalid="(invalid: backlog ran out)")
    assert all(
        r.verdict == "MISS (invalid: backlog ran out)" for r in isolation_rows(invalid, fast)
    )


def test_sizes_and_options() -> None:
    assert "downstream" in SCENARIOS
    quick = Sizes.of(True, 3.0, 3.0)
    assert quick.drain < Sizes.of(False, 120.0, 20.0).drain == 100_000
    assert Sizes.of(False, 120.0, 20.0).backlog >= 700 * 140
    assert parse_delays(["/slow=2", "/a=0.1"]) == {"/slow": 2.0, "/a": 0.1}
    with pytest.raises(ValueError, match="--delay takes"):
        parse_delays(["slow=2"])
