"""Capped exponential backoff with jitter: the one arithmetic for every retry in signback.

:func:`delay` is the arithmetic; the outbox's retry policy (``receiver/outbox/retry.py``)
uses it for actions. :class:`Backoff` applies it to a loop that retries infrastructure (the
pipeline and outbox loops while the database is away, the worker's supervisor, recording
an action's result, the PostgreSQL listener): each consecutive failure waits longer, up to
a cap, and a success starts over. The jitter spreads out the retries of processes that lost
the database at the same moment, so that they do not all come back in the same instant.

Tests inject ``rand`` and ``sleep``, or switch every wait off with :func:`set_testing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from collections.abc import Awaitable, Callable, Iterator

# The jitter's own generator: a loop's backoff leaves the process-wide random state alone
# (Hypothesis, for one, refuses tests whose code moves it between draws).
_JITTER = random.Random()

# The longest an infrastructure loop waits between two tries (a database outage can last;
# a loop that comes back within half a minute of its end is soon enough).
MAX_LOOP_DELAY = 30.0

# 2**60 seconds is past any cap; a larger exponent would only risk an overflow.
_MAX_EXPONENT = 60


class Jitter(enum.Enum):
    FULL = "full"  # uniform in [0, ceiling): spreads the most, may retry at once
    EQUAL = "equal"  # uniform in [ceiling / 2, ceiling): spreads, never hammers at once


def delay(
    attempt: int, *, base: float, cap: float, rand: float, jitter: Jitter = Jitter.EQUAL
) -> float:
    """Seconds to wait after failure number ``attempt`` (1: the first): ``base * 2**(attempt
    - 1)`` capped at ``cap``, then jittered by ``rand`` (uniform in [0, 1))."""
    ceiling = min(cap, base * 2.0 ** min(max(0, attempt - 1), _MAX_EXPONENT))
    if jitter is Jitter.FULL:
        return ceiling * rand
    return ceiling * (0.5 + 0.5 * rand)


async def sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, returning early when ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


_testing = False


def set_testing(on: bool) -> None:
    """Tests: every :meth:`Backoff.sleep` only yields to the event loop, however long its
    delay (the delays are still computed and logged)."""
    global _testing
    _testing = on


@contextlib.contextmanager
def testing() -> Iterator[None]:
    """:func:`set_testing` for the duration of a ``with`` block."""
    before = _testing
    set_testing(True)
    try:
        yield
    finally:
        set_testing(before)


class Backoff:
    """The waits of one retrying loop: ``next_delay()`` after each failure (longer each
    time, up to ``cap``), ``reset()`` after a success."""

    __slots__ = ("_rand", "_sleep", "base", "cap", "failures", "jitter")

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        jitter: Jitter = Jitter.EQUAL,
        rand: Callable[[], float] = _JITTER.random,  # jitter, not security
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.failures = 0
        self._rand = rand
        self._sleep = sleep

    def next_delay(self) -> float:
        """Count a failure; the seconds to wait before trying again."""
        self.failures += 1
        return delay(
            self.failures, base=self.base, cap=self.cap, rand=self._rand(), jitter=self.jitter
        )

    def reset(self) -> None:
        """It worked: the next failure waits ``base`` again."""
        self.failures = 0

    async def sleep(self, seconds: float, stopping: asyncio.Event | None = None) -> None:
        """Wait ``seconds`` (``next_delay()``'s answer), or until ``stopping`` is set."""
        if _testing:
            await asyncio.sleep(0)
        elif self._sleep is not None:
            await self._sleep(seconds)
        elif stopping is not None:
            await sleep_or_stop(stopping, seconds)
        else:
            await asyncio.sleep(seconds)
