"""Turning a provider's HTTP answer into an :class:`~receiver.providers.Outcome`."""

from __future__ import annotations

import math
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from receiver.outbox.budgets import Deferral
from receiver.outbox.provider_http import HttpAnswer
from receiver.providers import Outcome

EXCERPT_BYTES = 500

# A number this small in X-RateLimit-Reset is a delay, not a unix time (it would be 1970).
_RESET_IS_DELAY_BELOW = 1e9


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds from now (never negative): delta-seconds or an HTTP date
    with its zone; None if absent or unreadable."""
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        moment = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def requested_wait(response: HttpAnswer, *, now: float) -> float | None:
    """How long the provider asked us to wait, in seconds; None when it did not say.

    ``Retry-After`` wins. Otherwise ``X-RateLimit-Reset`` (a unix time, or a delay when it is
    small) — but only when the limit is actually hit (429, or ``X-RateLimit-Remaining: 0``):
    some providers send that header on *every* answer, and a 500 should not wait
    for the end of the rate-limit window.
    """
    retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
    if retry_after is not None:
        return retry_after
    limited = response.status_code == 429 or (
        _number(response.headers.get("x-ratelimit-remaining")) == 0
    )
    reset = _number(response.headers.get("x-ratelimit-reset"))
    if not limited or reset is None:
        return None
    if 0 <= reset < _RESET_IS_DELAY_BELOW:
        return reset
    return max(0.0, reset - now)


def excerpt(response: HttpAnswer) -> str:
    return response.content[:EXCERPT_BYTES].decode("utf-8", "replace")


def from_response(
    response: HttpAnswer,
    *,
    now: float,
    message: Callable[[HttpAnswer], str],
    retry_after: float | None = None,
) -> Outcome:
    ok = 200 <= response.status_code < 300
    if retry_after is None and not ok:
        retry_after = requested_wait(response, now=now)
    return Outcome(
        ok=ok,
        status_code=response.status_code,
        message="" if ok else message(response),
        retry_after=None if ok else retry_after,
        response_excerpt=excerpt(response),
    )


def deferred(deferral: Deferral, why: str) -> Outcome:
    """Nothing was sent because our own rate budget had no slot soon enough: the action
    comes back when one may be free, and the claim does not count as an attempt."""
    return Outcome(ok=False, deferred=True, retry_after=deferral.seconds, message=why)
