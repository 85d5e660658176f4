"""The outbox retry policy (receiver/outbox/retry.py): a pure function, so a table."""

from __future__ import annotations

import itertools

import pytest

from receiver.outbox.outcomes import Deferred, Done, Failed, GiveUp, Outcome, Skipped, Throttled
from receiver.outbox.retry import FINAL_STATUSES, DecisionStatus, RetryPolicy

NOW = 1_700_000_000.0
ALMOST_ONE = 1.0 - 1e-12
POLICY = RetryPolicy(max_attempts=12, max_age_seconds=86_400.0, base_delay=2.0, max_delay=600.0)


def decide(
    outcome: Outcome,
    *,
    attempts: int = 1,
    age: float = 0.0,
    rand: float = 0.5,
    policy: RetryPolicy = POLICY,
) -> tuple[str, float | None, str]:
    decision = policy.decide(outcome, attempts=attempts, created_at=NOW - age, now=NOW, rand=rand)
    return decision.status, decision.retry_at, decision.reason


def test_final_statuses_are_the_client_errors_that_cannot_succeed_later() -> None:
    assert frozenset({400, 401, 403, 404, 409, 422}) == FINAL_STATUSES


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        pytest.param(Done(status_code=200), ("done", None, ""), id="done"),
        pytest.param(Done(), ("done", None, ""), id="done-no-status"),
        pytest.param(
            Skipped("nothing to change"), ("skipped", None, "nothing to change"), id="skipped"
        ),
        pytest.param(
            Skipped("already applied", status_code=200, response_excerpt="{}"),
            ("skipped", None, "already applied"),
            id="skipped-after-asking",
        ),
        pytest.param(
            Deferred(4.5, "waiting for a slot"),
            ("deferred", NOW + 4.5, "waiting for a slot"),
            id="deferred",
        ),
        pytest.param(
            Deferred(-1.0, "waiting for a slot"),
            ("deferred", NOW, "waiting for a slot"),
            id="deferred-never-into-the-past",
        ),
    ],
)
@pytest.mark.parametrize("attempts", [1, 12, 1_000])
def test_done_skipped_and_deferred_ignore_attempts(
    outcome: Outcome, expected: tuple[str, float | None, str], attempts: int
) -> None:
    assert decide(outcome, attempts=attempts, age=90_000.0) == expected


@pytest.mark.parametrize("status_code", [400, 401, 403, 404, 409, 422])
@pytest.mark.parametrize("attempts", [1, 5])
def test_final_client_errors_are_dead_at_once(status_code: int, attempts: int) -> None:
    status, retry_at, reason = decide(
        Failed(status_code=status_code, message="no such request", retry_after=1.0),
        attempts=attempts,
    )
    assert (status, retry_at) == ("dead", None)
    assert reason == f"HTTP {status_code}: no such request"


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        pytest.param(Failed(status_code=500), "HTTP 500", id="500"),
        pytest.param(Failed(status_code=502, message="bad gw"), "HTTP 502: bad gw"),
        pytest.param(Failed(status_code=503), "HTTP 503", id="503-no-retry-after"),
        pytest.param(Failed(status_code=408), "HTTP 408", id="408"),
        pytest.param(Failed(), "no answer", id="no-answer"),
        pytest.param(
            Failed("could not reach the provider (ConnectError)"),
            "could not reach the provider (ConnectError)",
            id="transport-error",
        ),
    ],
)
@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(1, 2.0), (2, 4.0), (4, 16.0), (9, 512.0), (10, 600.0), (11, 600.0)],
)
@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, ALMOST_ONE])
def test_retryable_failures_retry_within_half_to_full_ceiling(
    outcome: Outcome, reason: str, attempts: int, ceiling: float, rand: float
) -> None:
    status, retry_at, got_reason = decide(outcome, attempts=attempts, rand=rand)

    assert status == "retry"
    assert got_reason == reason
    assert retry_at is not None
    delay = retry_at - NOW
    assert ceiling / 2 <= delay <= ceiling
    assert delay == pytest.approx(ceiling * (0.5 + 0.5 * rand))


@pytest.mark.parametrize(
    ("retry_after", "expected_delay"),
    [
        pytest.param(30.0, 30.0, id="below-backoff-ceiling"),
        pytest.param(3_600.0, 3_600.0, id="above-max-delay"),
        pytest.param(0.0, 0.0, id="zero"),
        pytest.param(-5.0, 0.0, id="negative-is-now"),
    ],
)
@pytest.mark.parametrize("status_code", [500, 502, None])
@pytest.mark.parametrize("rand", [0.0, ALMOST_ONE])
def test_retry_after_wins(
    retry_after: float, expected_delay: float, status_code: int | None, rand: float
) -> None:
    outcome = Failed(status_code=status_code, retry_after=retry_after)
    status, retry_at, _ = decide(outcome, attempts=3, rand=rand)
    assert status == "retry"
    assert retry_at == NOW + expected_delay


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(1, "retry"), (11, "retry"), (12, "dead"), (13, "dead"), (100, "dead")],
)
def test_max_attempts(attempts: int, expected: str) -> None:
    status, retry_at, reason = decide(
        Failed(status_code=500, message="busy", retry_after=1.0), attempts=attempts
    )
    assert status == expected
    if expected == "dead":
        assert retry_at is None
        assert reason == f"gave up after {attempts} attempts; last: HTTP 500: busy"


@pytest.mark.parametrize(
    ("age", "rand", "retry_after", "expected"),
    [
        pytest.param(0.0, 0.5, None, "retry", id="young"),
        # attempts=1: the delay is 1.0 with rand=0 and 1.5 with rand=0.5.
        pytest.param(86_399.0, 0.0, None, "retry", id="retry-exactly-at-max-age"),
        pytest.param(86_399.0, 0.5, None, "dead", id="retry-just-past-max-age"),
        pytest.param(86_400.0, 0.0, None, "dead", id="already-at-max-age"),
        pytest.param(90_000.0, 0.0, None, "dead", id="older-than-max-age"),
        pytest.param(86_000.0, 0.0, 300.0, "retry", id="retry-after-within-age"),
        pytest.param(86_000.0, 0.0, 500.0, "dead", id="retry-after-past-max-age"),
    ],
)
def test_max_age(age: float, rand: float, retry_after: float | None, expected: str) -> None:
    status, retry_at, reason = decide(
        Failed(status_code=500, retry_after=retry_after), age=age, rand=rand
    )
    assert status == expected
    if expected == "dead":
        assert retry_at is None
        assert reason.startswith(f"gave up after {int(age)} s and 1 attempts; HTTP 500")
        # Younger than the limit: the wait is what passes it, and the reason says so.
        assert ("would pass the age limit of 86400 s" in reason) == (age < 86_400)


@pytest.mark.parametrize("status_code", [None, 200, 409, 429, 500, 503])
@pytest.mark.parametrize("attempts", [1, 50])
def test_give_up_is_dead_regardless_of_status(status_code: int | None, attempts: int) -> None:
    outcome = GiveUp("invalid payload", status_code=status_code)
    status, retry_at, reason = decide(outcome, attempts=attempts)
    assert (status, retry_at) == ("dead", None)
    assert "invalid payload" in reason
    assert "gave up" not in reason


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [
        (0, 2.0),
        (1, 2.0),
        (2, 4.0),
        (3, 8.0),
        (5, 32.0),
        (9, 512.0),
        (10, 600.0),
        (11, 600.0),
        (60, 600.0),
        (1_000, 600.0),
    ],
)
def test_backoff_jitter_bounds(attempts: int, ceiling: float) -> None:
    assert POLICY.backoff(attempts, 0.0) == ceiling / 2
    assert POLICY.backoff(attempts, ALMOST_ONE) == pytest.approx(ceiling)
    assert POLICY.backoff(attempts, ALMOST_ONE) <= ceiling
    for rand in (0.0, 0.1, 0.5, 0.9, ALMOST_ONE):
        assert ceiling / 2 <= POLICY.backoff(attempts, rand) <= ceiling


@pytest.mark.parametrize("rand", [0.0, 0.3, ALMOST_ONE])
def test_backoff_doubles_until_capped(rand: float) -> None:
    delays = [POLICY.backoff(n, rand) for n in range(1, 30)]
    for before, after in itertools.pairwise(delays):
        assert after == min(2 * before, 600.0 * (0.5 + 0.5 * rand))
    assert max(delays) == pytest.approx(600.0 * (0.5 + 0.5 * rand))


@pytest.mark.parametrize(
    ("policy", "attempts", "ceiling"),
    [
        (RetryPolicy(base_delay=0.01, max_delay=0.05), 1, 0.01),
        (RetryPolicy(base_delay=0.01, max_delay=0.05), 4, 0.05),
        (RetryPolicy(base_delay=10.0, max_delay=5.0), 1, 5.0),
    ],
)
def test_backoff_with_other_settings(policy: RetryPolicy, attempts: int, ceiling: float) -> None:
    assert policy.backoff(attempts, 0.0) == pytest.approx(ceiling / 2)
    assert policy.backoff(attempts, ALMOST_ONE) == pytest.approx(ceiling)


def test_backoff_stays_capped_for_very_many_attempts() -> None:
    policy = RetryPolicy(max_attempts=100_000, max_age_seconds=1e12)
    status, retry_at, _ = decide(Failed(status_code=503), attempts=1_100, rand=0.0, policy=policy)
    assert (status, retry_at) == ("retry", NOW + 300.0)


# --- Throttled: the provider asked us to wait ---------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "asked"),
    [
        pytest.param(Throttled(429, retry_after=30.0), 30.0, id="429-30s"),
        pytest.param(Throttled(429, retry_after=3_600.0), 3_600.0, id="1h"),
        pytest.param(Throttled(503, retry_after=7.0), 7.0, id="503-7s"),
        # No hint at all: one rate window.
        pytest.param(Throttled(429), 60.0, id="429-no-hint"),
        # "Come back at once" still waits the base delay: no spinning against the provider.
        pytest.param(Throttled(429, retry_after=0.0), 2.0, id="429-zero"),
    ],
)
@pytest.mark.parametrize("attempts", [1, 11, 12, 13, 100])
@pytest.mark.parametrize("rand", [0.0, 0.5, ALMOST_ONE])
def test_a_throttle_waits_as_asked_and_never_gives_up_for_attempts(
    outcome: Throttled, asked: float, attempts: int, rand: float
) -> None:
    status, retry_at, reason = decide(outcome, attempts=attempts, rand=rand)
    assert status == "throttled"
    assert reason.startswith(f"throttled: HTTP {outcome.status_code}")
    assert retry_at is not None
    # As asked, plus up to a quarter more so a wave of 429s does not come back at once.
    assert retry_at - NOW == pytest.approx(asked * (1 + 0.25 * rand))
    assert asked <= retry_at - NOW <= asked * 1.25


@pytest.mark.parametrize(
    ("age", "retry_after", "expected"),
    [
        pytest.param(0.0, 30.0, "throttled", id="young"),
        pytest.param(86_000.0, 300.0, "throttled", id="within-max-age"),
        pytest.param(86_000.0, 500.0, "dead", id="past-max-age"),
    ],
)
def test_max_age_is_the_backstop_for_throttles(
    age: float, retry_after: float, expected: str
) -> None:
    status, _, reason = decide(Throttled(429, retry_after=retry_after), age=age, rand=0.0)
    assert status == expected
    if expected == "dead":
        assert reason == (
            f"gave up after {int(age)} s and 1 attempts; throttled: HTTP 429"
            f" (the next try, {int(retry_after)} s away, would pass the age limit of 86400 s)"
        )


def test_a_retry_after_past_the_age_limit_says_so() -> None:
    """An endpoint answering ``429`` with ``Retry-After: 999999999`` on the first attempt:
    the delivery is given up at once, and the reason names the wait, not only "0 s"."""
    status, _, reason = decide(Throttled(429, retry_after=999_999_999.0), age=0.0, rand=0.0)
    assert status == "dead"
    assert reason == (
        "gave up after 0 s and 1 attempts; throttled: HTTP 429 (the next try, 999999999 s"
        " away, would pass the age limit of 86400 s)"
    )


def test_a_give_up_with_429_is_still_final() -> None:
    status, _, _ = decide(GiveUp("bad", status_code=429))
    assert status == "dead"


def test_a_policys_final_statuses_hold_for_throttles_too() -> None:
    policy = RetryPolicy(final_statuses=frozenset({429}))
    status, _, reason = decide(Throttled(429, message="over quota"), policy=policy)
    assert (status, reason) == ("dead", "HTTP 429: over quota")


def test_decisions_are_enum_members_that_compare_as_their_stored_value() -> None:
    decision = POLICY.decide(Done(), attempts=1, created_at=NOW, now=NOW, rand=0.5)
    assert decision.status is DecisionStatus.DONE
    assert decision.status.value == "done"
