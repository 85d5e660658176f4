"""When to read a request's real state next (pure): soon after registration, then twice as
long after each read up to a cap, until the request ends or is older than the maximum age.
A request whose state changed more recently than its current step is not read: its next
read moves to one step after that change."""

from __future__ import annotations

from dataclasses import dataclass

from receiver.settings import Settings


@dataclass(frozen=True, slots=True)
class Next:
    """What to do with a due request."""

    read: bool  # queue a read now
    at: float | None  # the next read after this one (None: the schedule is over)
    interval: float  # the step that ``at`` was set with


@dataclass(frozen=True, slots=True)
class Policy:
    first_delay: float  # the first read, after registration
    max_interval: float  # the longest step
    max_age: float  # no reads for a request older than this
    soon: float  # the read after an unconfirmed claim or a failed callback

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            first_delay=settings.reconcile_first_delay_seconds,
            max_interval=settings.reconcile_max_interval_seconds,
            max_age=settings.reconcile_max_age_seconds,
            soon=settings.reconcile_soon_seconds,
        )

    def first(self, created_at: float) -> tuple[float, float]:
        """The first read of a new request and its step."""
        return created_at + self.first_delay, self.first_delay

    def due(
        self,
        *,
        now: float,
        created_at: float,
        updated_at: float,
        interval: float | None,
        queued: bool,
    ) -> Next:
        """A request whose read is due. ``queued``: a read of it, or another call to its
        provider, is still waiting in the outbox (behind the provider's rate budget, or its
        retries): no read now, the next look is a step later. ``updated_at``: its last state
        change (a confirmed event)."""
        step = min(interval or self.first_delay, self.max_interval)
        if now - created_at >= self.max_age:
            return Next(read=False, at=None, interval=step)
        if queued:
            return Next(read=False, at=self._capped(now + step, created_at), interval=step)
        if updated_at > created_at and now - updated_at < step:
            # Heard from recently (its state changed since the registration): that was as
            # good as a read. A step after it.
            return Next(read=False, at=self._capped(updated_at + step, created_at), interval=step)
        longer = min(step * 2, self.max_interval)
        return Next(read=True, at=self._capped(now + longer, created_at), interval=longer)

    def _capped(self, at: float, created_at: float) -> float | None:
        """``at``, or None when it is past the request's maximum age."""
        return at if at - created_at <= self.max_age else None
