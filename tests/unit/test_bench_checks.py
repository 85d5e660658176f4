"""The bench refuses to report figures from a run whose answers were not acknowledgements."""

from __future__ import annotations

from bench.load import WrkResult
from bench.scenarios import IntakeRun, answers_invalid, first_invalid


def result(*, requests: int, accepted: int, other: int) -> WrkResult:
    return WrkResult(
        requests=requests,
        duration_s=10.0,
        sent=requests,
        n2xx=requests - other,
        accepted=accepted,
        duplicates=0,
        other=other,
        wrapped=0,
        pool_size=0,
        errors={},
        latency_ms={"p50": 1.0, "p99": 2.0},
        raw={},
    )


def test_a_run_of_acknowledgements_is_valid() -> None:
    assert answers_invalid(result(requests=50_000, accepted=49_990, other=10)) is None


def test_a_run_of_refusals_is_invalid() -> None:
    # What a stale data file (tokens of another bench) produced: every answer a fast 404.
    reason = answers_invalid(result(requests=90_988, accepted=0, other=90_988))
    assert reason == "(invalid: no callback was accepted)"


def test_more_than_one_percent_refused_is_invalid() -> None:
    reason = answers_invalid(result(requests=10_000, accepted=9_800, other=200))
    assert reason == "(invalid: 200 of 10,000 answers were not 2xx)"


def test_a_row_built_from_several_runs_is_invalid_if_one_of_them_is() -> None:
    # The growth and slow-provider rows compare runs; one run of refusals spoils the row.
    good = IntakeRun(result(requests=100, accepted=100, other=0), 0, 100, acked=100)
    refused = IntakeRun(
        result(requests=100, accepted=0, other=100),
        0,
        0,
        acked=0,
        invalid="(invalid: no callback was accepted)",
    )
    assert first_invalid(good, good) is None
    assert first_invalid(good, refused, good) == "(invalid: no callback was accepted)"
