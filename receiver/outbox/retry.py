"""The outbox retry policy, a pure function of (outcome, attempts, age) → what happens next.

Capped exponential backoff with jitter (``receiver/backoff.py``), a provider's
``Retry-After`` always wins, client errors that cannot succeed later are final, and an
action gives up after a number of attempts or an age — whichever comes first.

A provider that asks us to wait (a :class:`~receiver.outbox.outcomes.Throttled` outcome: a
429, or a 503 with ``Retry-After``) is obeyed, not counted: the action is ``throttled``, comes
back when asked (``Retry-After``, else ``X-RateLimit-Reset``, else ``throttle_delay``), and
that attempt does not count toward ``max_attempts``. Only the age limit still applies to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from receiver.backoff import delay
from receiver.outbox.outcomes import Deferred, Done, Failed, GiveUp, Outcome, Skipped, Throttled

# The provider understood us and said no: sending the same thing again cannot help.
FINAL_STATUSES: frozenset[int] = frozenset({400, 401, 403, 404, 409, 422})


class DecisionStatus(enum.StrEnum):
    """What happens to an action after an attempt (also the attempts metric's ``outcome``)."""

    DONE = "done"
    RETRY = "retry"  # failed; tried again at ``retry_at``
    THROTTLED = "throttled"  # the provider asked us to wait; not counted as an attempt
    DEFERRED = "deferred"  # nothing was sent; not an attempt at all
    DEAD = "dead"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Decision:
    status: DecisionStatus
    retry_at: float | None = None  # unix seconds, for RETRY, THROTTLED and DEFERRED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 12
    max_age_seconds: float = 2 * 24 * 3600
    base_delay: float = 2.0
    max_delay: float = 600.0
    final_statuses: frozenset[int] = FINAL_STATUSES
    # How long to wait after a 429 that does not say how long.
    throttle_delay: float = 60.0

    def backoff(self, attempts: int, rand: float) -> float:
        """Delay before attempt ``attempts + 1``: a capped exponential with equal jitter.
        Never zero (at least half the ceiling), so retries of many actions spread out without
        any of them hammering a struggling provider at once."""
        return delay(attempts, base=self.base_delay, cap=self.max_delay, rand=rand)

    def decide(
        self, outcome: Outcome, *, attempts: int, created_at: float, now: float, rand: float
    ) -> Decision:
        """``attempts`` counts the attempt that just ended; ``rand`` is uniform in [0, 1)."""
        if isinstance(outcome, Done):
            return Decision(DecisionStatus.DONE)
        if isinstance(outcome, Deferred):
            return Decision(
                DecisionStatus.DEFERRED,
                retry_at=now + max(0.0, outcome.retry_after),
                reason=outcome.message,
            )
        if isinstance(outcome, Skipped):
            return Decision(DecisionStatus.SKIPPED, reason=outcome.message)
        what = _describe(outcome)
        if isinstance(outcome, GiveUp) or outcome.status_code in self.final_statuses:
            return Decision(DecisionStatus.DEAD, reason=what)
        if isinstance(outcome, Throttled):
            return self._throttled(
                outcome, what, attempts=attempts, created_at=created_at, now=now, rand=rand
            )
        if attempts >= self.max_attempts:
            return Decision(
                DecisionStatus.DEAD, reason=f"gave up after {attempts} attempts; last: {what}"
            )
        if outcome.retry_after is not None:
            delay = max(0.0, outcome.retry_after)
        else:
            delay = self.backoff(attempts, rand)
        retry_at = now + delay
        if retry_at - created_at > self.max_age_seconds:
            return self._too_old(
                what, attempts=attempts, created_at=created_at, now=now, wait=delay
            )
        return Decision(DecisionStatus.RETRY, retry_at=retry_at, reason=what)

    def _too_old(
        self, what: str, *, attempts: int, created_at: float, now: float, wait: float
    ) -> Decision:
        reason = f"gave up after {int(now - created_at)} s and {attempts} attempts; {what}"
        if now - created_at < self.max_age_seconds:
            # Not old yet: the wait (often the other side's Retry-After) is what passes the
            # limit, and "gave up after 0 s" alone would not say so.
            reason += (
                f" (the next try, {int(wait)} s away, would pass the age limit of"
                f" {int(self.max_age_seconds)} s)"
            )
        return Decision(DecisionStatus.DEAD, reason=reason)

    def _throttled(
        self,
        outcome: Throttled,
        what: str,
        *,
        attempts: int,
        created_at: float,
        now: float,
        rand: float,
    ) -> Decision:
        asked = outcome.retry_after if outcome.retry_after is not None else self.throttle_delay
        # At least the base delay, so "Retry-After: 0" cannot make us spin against the
        # provider; and up to a quarter more, so that the many actions one 429 wave sent
        # back do not all return in the same instant.
        wait = max(asked, self.base_delay) * (1.0 + 0.25 * rand)
        retry_at = now + wait
        if retry_at - created_at > self.max_age_seconds:
            return self._too_old(
                f"throttled: {what}", attempts=attempts, created_at=created_at, now=now, wait=wait
            )
        return Decision(DecisionStatus.THROTTLED, retry_at=retry_at, reason=f"throttled: {what}")


def _describe(outcome: Failed | Throttled | GiveUp) -> str:
    if outcome.status_code is None:
        return outcome.message or "no answer"
    return (
        f"HTTP {outcome.status_code}: {outcome.message}"
        if outcome.message
        else (f"HTTP {outcome.status_code}")
    )
