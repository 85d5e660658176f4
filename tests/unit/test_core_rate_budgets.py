"""Rate budgets and provider waits: the settings, the budgets' keys, and how a provider's
answer says how long to wait (receiver/outbox/outcomes.py), for every provider alike."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from handlers.firma import budgets
from handlers.firma.settings import FirmaSettings
from receiver.app import build_context
from receiver.errors import ConfigurationError
from receiver.outbox.budgets import Deferral
from receiver.outbox.outcomes import (
    Deferred,
    Failed,
    Throttled,
    deferred,
    from_response,
    requested_wait,
)
from tests.conftest import test_settings

NOW = 1_700_000_000.0


def settings(**overrides: Any) -> Any:
    return test_settings("sqlite:///unused.db", **overrides)


def test_firma_budgets_default_below_firmas_limits() -> None:
    s = settings().section(FirmaSettings)
    assert (s.reads_per_minute, s.writes_per_minute) == (150.0, 100.0)
    assert settings(firma_reads_per_minute=200, firma_writes_per_minute=120)


@pytest.mark.parametrize(
    "overrides",
    [
        {"firma_reads_per_minute": 201},
        {"firma_reads_per_minute": 0},
        {"firma_writes_per_minute": 121},
    ],
)
def test_firma_budgets_above_firmas_limits_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(overrides)).upper()):
        settings(**overrides)


def test_budgets_are_per_api_key_and_never_name_it() -> None:
    one = build_context(settings(firma_api_key="key-one-secret"))
    two = build_context(settings(firma_api_key="key-two-secret"), rate_window_seconds=6.0)
    assert budgets.reads(one).key != budgets.reads(two).key
    assert budgets.reads(one).key != budgets.writes(one).key
    for budget in (budgets.reads(one), budgets.writes(one)):
        assert "secret" not in budget.key
    assert (budgets.reads(one).per_window, budgets.reads(one).window) == (150.0, 60.0)
    assert (budgets.writes(two).per_window, budgets.writes(two).window) == (100.0, 6.0)


@pytest.mark.parametrize("window", [0.0, -1.0, float("nan"), float("inf")])
def test_a_rate_window_must_be_positive(window: float) -> None:
    with pytest.raises(ConfigurationError):
        build_context(settings(), rate_window_seconds=window)


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, content=b'{"error": "slow down"}')


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(answer(429, **{"Retry-After": "7"}), 7.0, id="retry-after"),
        pytest.param(answer(429, **{"Retry-After": "1.5"}), 1.5, id="fractional"),
        pytest.param(answer(503, **{"Retry-After": "30"}), 30.0, id="503"),
        pytest.param(
            answer(429, **{"X-RateLimit-Reset": str(int(NOW) + 40)}), 40.0, id="reset-unix-time"
        ),
        pytest.param(answer(429, **{"X-RateLimit-Reset": "12"}), 12.0, id="reset-as-delay"),
        pytest.param(
            answer(429, **{"Retry-After": "3", "X-RateLimit-Reset": str(int(NOW) + 40)}),
            3.0,
            id="retry-after-wins",
        ),
        # Firma sends X-RateLimit-Reset on every answer: a 500 does not wait for it.
        pytest.param(answer(500, **{"X-RateLimit-Reset": str(int(NOW) + 40)}), None, id="500"),
        pytest.param(answer(429), None, id="no-hint"),
        pytest.param(answer(429, **{"Retry-After": "soon"}), None, id="unreadable"),
    ],
)
def test_requested_wait(response: httpx.Response, expected: float | None) -> None:
    assert requested_wait(response, now=NOW) == expected


@pytest.mark.parametrize(
    ("response", "throttled"),
    [
        (answer(429), True),
        (answer(429, **{"X-RateLimit-Reset": str(int(NOW) + 40)}), True),
        (answer(503, **{"Retry-After": "30"}), True),
        (answer(503), False),  # an outage, not a request to wait: retried and counted
        (answer(500, **{"Retry-After": "30"}), False),
    ],
)
def test_any_providers_answer_can_be_a_throttle(response: httpx.Response, throttled: bool) -> None:
    outcome = from_response(response, now=NOW, message=lambda r: "slow down")
    assert isinstance(outcome, Throttled if throttled else Failed)
    assert outcome.status_code == response.status_code
    assert outcome.message == "slow down"


def test_a_deferral_is_an_outcome_that_sends_nothing() -> None:
    outcome = deferred(Deferral("firma-writes:abc", 4.5), "waiting for a write slot")
    assert outcome == Deferred(4.5, "waiting for a write slot")
    assert (outcome.status_code, outcome.response_excerpt, outcome.follow_up) == (None, "", ())
