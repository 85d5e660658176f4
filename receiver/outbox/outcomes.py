"""Turning a provider's HTTP answer into an :class:`~receiver.providers.Outcome`."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

from receiver.outbox.provider_http import HttpAnswer
from receiver.providers import Outcome

EXCERPT_BYTES = 500


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


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
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
    return Outcome(
        ok=ok,
        status_code=response.status_code,
        message="" if ok else message(response),
        retry_after=None if ok else retry_after,
        response_excerpt=excerpt(response),
    )
