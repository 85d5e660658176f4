"""How one attempt at an outbox action ended (:data:`Outcome`), and turning a provider's
HTTP answer into one.

An outcome is exactly one of a closed set of variants, each holding only the data that makes
sense for it: no outcome can be a success and a failure, or skipped and deferred, at once.
What follows each is the retry policy's decision (``receiver/outbox/retry.py``):

- :class:`Done`: the provider accepted the call → done.
- :class:`Skipped`: deliberately not done, saying why → skipped.
- :class:`Deferred`: nothing sent, our own rate budget has no slot soon enough → back after
  ``retry_after``, not counted as an attempt.
- :class:`Throttled`: the provider asked us to slow down → back when asked, not counted.
- :class:`Failed`: it did not work and may work later → retried with backoff.
- :class:`GiveUp`: it cannot work, whatever we try → dead.

Every variant answers ``status_code``, ``message``, ``response_excerpt`` and ``follow_up``
(those that cannot have one answer ``None``, ``""`` or ``()``): what the dispatcher and the
attempt log read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeAlias, cast

from receiver.logs import redact_tokens
from receiver.outbox.budgets import Deferral
from receiver.outbox.provider_http import HttpAnswer

EXCERPT_BYTES = 500


@dataclass(frozen=True, slots=True)
class FollowUpEvent:
    """An event an operation learned about (e.g. a confirmed state), fed back to the inbox."""

    provider: str
    channel: str
    body: bytes
    dedupe_key: str
    request_id: int | None


@dataclass(frozen=True, slots=True)
class Done:
    """The provider accepted the call."""

    status_code: int | None = None  # the provider's HTTP status
    response_excerpt: str = ""  # the first bytes of the answer, for the attempt log
    follow_up: Sequence[FollowUpEvent] = ()  # what the call taught us, fed to the inbox
    message: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class Skipped:
    """Deliberately not done (e.g. the request is no longer editable); ``message`` says why.
    Ends the action as ``skipped``; an operator can re-queue it."""

    message: str
    status_code: int | None = None  # the answer that showed it, if one was asked for
    response_excerpt: str = ""
    follow_up: ClassVar[Sequence[FollowUpEvent]] = ()


@dataclass(frozen=True, slots=True)
class Deferred:
    """Nothing was sent (our own rate budget, or the database, is not ready): the action
    comes back after ``retry_after`` seconds, and the claim does not count as an attempt."""

    retry_after: float
    message: str
    status_code: ClassVar[int | None] = None
    response_excerpt: ClassVar[str] = ""
    follow_up: ClassVar[Sequence[FollowUpEvent]] = ()


@dataclass(frozen=True, slots=True)
class Throttled:
    """The provider asked us to slow down: a 429, or a 503 that says when to come back.

    That is no failure of the action: it waits as asked (``retry_after``; None: the policy's
    ``throttle_delay``) and the attempt does not count toward the ones that make an action
    dead. A 503 without ``Retry-After`` may be an outage: that is a :class:`Failed`.
    """

    status_code: int
    retry_after: float | None = None  # seconds the provider asked us to wait
    message: str = ""  # the provider's own text
    response_excerpt: str = ""
    follow_up: ClassVar[Sequence[FollowUpEvent]] = ()


@dataclass(frozen=True, slots=True)
class Failed:
    """It did not work, and may work later: retried with backoff (``retry_after`` wins)
    until the policy's attempts or age run out. A status among the policy's final ones
    (400, 404, 422 …) is given up at once."""

    message: str = ""  # the provider's own error text, or what went wrong on our side
    status_code: int | None = None  # None when no answer came
    retry_after: float | None = None  # seconds the provider asked us to wait
    response_excerpt: str = ""
    follow_up: Sequence[FollowUpEvent] = ()


@dataclass(frozen=True, slots=True)
class GiveUp:
    """It cannot work, whatever we try (an invalid payload, a request that is gone, an
    update the provider refuses for good): the action is dead at once."""

    message: str
    status_code: int | None = None
    response_excerpt: str = ""
    follow_up: ClassVar[Sequence[FollowUpEvent]] = ()


Outcome: TypeAlias = Done | Skipped | Deferred | Throttled | Failed | GiveUp


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
) -> Done | Throttled | Failed:
    """The outcome of an answer: 2xx is :class:`Done`; a 429, or a 503 that says when to
    come back, is :class:`Throttled`; anything else :class:`Failed` (the retry policy gives
    up at once on its final statuses). ``retry_after``: the wait the provider asked for, when
    the caller read it its own way (else :func:`requested_wait`)."""
    status_code = response.status_code
    if 200 <= status_code < 300:
        return Done(status_code=status_code, response_excerpt=excerpt(response))
    if retry_after is None:
        retry_after = requested_wait(response, now=now)
    if status_code == 429 or (status_code == 503 and retry_after is not None):
        return Throttled(status_code, retry_after, message(response), excerpt(response))
    return Failed(message(response), status_code, retry_after, excerpt(response))


def deferred(deferral: Deferral, why: str) -> Deferred:
    """Nothing was sent because our own rate budget had no slot soon enough: the action
    comes back when one may be free, and the claim does not count as an attempt."""
    return Deferred(deferral.seconds, why)


def redacted(outcome: Outcome) -> Outcome:
    """``outcome`` with anything token-shaped cut out of its message and response excerpt
    (receiver.logs.redact_tokens), before the attempt log stores it, a log line or a
    downstream event repeats it, or the admin API shows it. A provider may echo what it was
    sent (an invalid callback URL, which carries the request's hook token, say), and
    an HTTP library's error may quote a URL with a credential in it."""
    changes: dict[str, str] = {}
    for field in dataclasses.fields(outcome):  # instance fields only, not the ClassVars
        if field.name in ("message", "response_excerpt"):
            value = getattr(outcome, field.name)
            cleaned = redact_tokens(value)
            if cleaned != value:
                changes[field.name] = cleaned
    if not changes:
        return outcome
    changed: Outcome = dataclasses.replace(cast(Any, outcome), **changes)  # any variant
    return changed
