"""Acknowledgements first: how much of the event loop the background work may take.

``signback serve`` answers callbacks and, on the same event loop, runs the pipeline and the
outbox dispatcher. A provider waits for the acknowledgement (some give 5 seconds, and
retries what it does not get), while the work after it may lag a little. So when callbacks
pour in faster than the loop can answer them *and* do the work behind them, the work waits:

- :class:`IntakeLoad` counts the callbacks being answered on the loop at each moment:
  not those waiting for the database (their commit is on its way) or for their body.
  Averaged over time that is, by Little's law, their rate times the time each spends on
  the loop or waiting for it: while the loop keeps up, the share of the loop the intake
  uses (under one); when callbacks queue up for the loop, more than one;
- :class:`Occupancy` measures how long background tasks hold the loop. Tasks started from
  a context marked with :func:`background_context` (the worker's) are wrapped by the loop's
  task factory, which times each of their steps;
- :class:`Governor` is asked by the background loops before each piece of work
  (:meth:`Governor.turn`). While callbacks queue up (on average ``SATURATED_IN_FLIGHT``
  or more on the loop at once), it keeps the background's share of the loop at
  ``SHARE_WHEN_SATURATED``; otherwise it never holds anything up. Under a steady load the
  loop can carry, the background gets whatever the intake leaves; in a flood, the
  acknowledgements get nine tenths of the loop and the backlog is worked off afterwards.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "signback_background", default=False
)


def background_context() -> contextvars.Context:
    """A copy of the current context in which new tasks count as background work."""
    context = contextvars.copy_context()
    context.run(_BACKGROUND.set, True)
    return context


class IntakeLoad:
    """Callbacks being answered, kept by the HTTP intake (on the event loop: plain numbers
    do). ``area`` is the integral of their number over time: its growth over an interval,
    divided by the interval, is how many were in flight on average.

    A callback waiting for the database or for its body (:meth:`waiting` … :meth:`resumed`)
    does not count meanwhile: it waits for a commit or for the client, not for the loop.
    Counting it made a steady load look like a flood on PostgreSQL, where a commit takes a
    round trip to another process: at 2,000 callbacks/s and 2 ms per commit, four are
    waiting at any moment, and the governor held the background to a tenth of a loop that
    was mostly idle."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.in_flight = 0
        self._area = 0.0
        self._at = clock()

    def _accrue(self) -> None:
        now = self._clock()
        self._area += self.in_flight * (now - self._at)
        self._at = now

    def arrived(self) -> None:
        self._accrue()
        self.in_flight += 1

    def answered(self) -> None:
        self._accrue()
        self.in_flight -= 1

    def waiting(self) -> None:
        """A callback being answered now waits for the database."""
        self.answered()

    def resumed(self) -> None:
        """Its database work is done (or failed): it is being answered on the loop again."""
        self.arrived()

    @property
    def area(self) -> float:
        self._accrue()
        return self._area


class Occupancy:
    """Seconds the event loop spent running background tasks' steps."""

    def __init__(self, *, timer: Callable[[], float] = time.perf_counter) -> None:
        self.busy = 0.0
        self.timer = timer  # a monotonic clock in seconds; tests pass one they move

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Time every task created in a :func:`background_context` on ``loop`` (once: a
        second call for the same loop changes nothing)."""
        previous = loop.get_task_factory()
        if getattr(previous, "occupancy", None) is self:
            return
        occupancy = self

        def factory(
            loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
        ) -> asyncio.Future[Any]:
            context = kwargs.get("context")
            is_background = (
                context.get(_BACKGROUND, False) if context is not None else _BACKGROUND.get()
            )
            if is_background:
                coro = _Timed(coro, occupancy)
            if previous is not None:
                return previous(loop, coro, **kwargs)
            return asyncio.Task(coro, loop=loop, **kwargs)

        factory.occupancy = self  # type: ignore[attr-defined]
        loop.set_task_factory(factory)


class _Timed(Coroutine[Any, Any, Any]):
    """A coroutine that adds the time each of its steps takes to an :class:`Occupancy`."""

    __slots__ = ("_coro", "_occupancy", "_timer")

    def __init__(self, coro: Coroutine[Any, Any, Any], occupancy: Occupancy) -> None:
        self._coro = coro
        self._occupancy = occupancy
        self._timer = occupancy.timer

    def send(self, value: Any) -> Any:
        started = self._timer()
        try:
            return self._coro.send(value)
        finally:
            self._occupancy.busy += self._timer() - started

    def throw(self, *args: Any) -> Any:
        started = self._timer()
        try:
            return self._coro.throw(*args)
        finally:
            self._occupancy.busy += self._timer() - started

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __repr__(self) -> str:
        return repr(self._coro)


class Governor:
    """Decides when background work may take its next piece (see the module doc)."""

    SHARE_WHEN_SATURATED = 0.1  # the background's share of the loop during a flood
    # Callbacks on the loop (being answered, or ready and waiting for their turn; not those
    # waiting for the database or the client), on average, in a flood. One: the intake's
    # own work fills the loop, or callbacks queue for it (see the module doc).
    SATURATED_IN_FLIGHT = 1.0
    WINDOW = 0.05  # seconds over which that average is taken
    MAX_CREDIT = 0.005  # seconds of background work that may go ahead of the share
    TOLERANCE = 0.0005  # seconds beyond the share not worth a pause
    MIN_PAUSE, MAX_PAUSE = 0.001, 0.1  # seconds

    def __init__(
        self,
        intake: IntakeLoad,
        occupancy: Occupancy,
        *,
        clock: Callable[[], float] = time.perf_counter,
        on_hold: Callable[[float], None] | None = None,
    ) -> None:
        self.intake = intake
        self._on_hold = on_hold  # told each pause's length (the metrics count them)
        self.occupancy = occupancy
        self._clock = clock
        now = clock()
        self._mark = (now, intake.area)
        self._saturated = False
        self._debt = 0.0  # background seconds beyond its share while saturated
        self._debt_at = (now, occupancy.busy)
        self.waits = 0  # times turn() held the background back (for tests and metrics)

    def saturated(self) -> bool:
        """Callbacks queued up during the last window (see the module doc)."""
        now = self._clock()
        since, area = self._mark
        if now - since >= self.WINDOW:
            area_now = self.intake.area
            self._saturated = area_now - area >= self.SATURATED_IN_FLIGHT * (now - since)
            self._mark = (now, area_now)
        return self._saturated

    def _settle(self) -> float:
        """Add the background time since the last call, less its share of the wall time."""
        now = self._clock()
        then, busy_then = self._debt_at
        busy = self.occupancy.busy
        self._debt += (busy - busy_then) - self.SHARE_WHEN_SATURATED * (now - then)
        self._debt = max(self._debt, -self.MAX_CREDIT)
        self._debt_at = (now, busy)
        return self._debt

    async def turn(self) -> None:
        """Wait, if need be, until the background may take its next piece of work."""
        debt = self._settle()
        while debt > self.TOLERANCE and self.saturated():
            self.waits += 1
            pause = min(max(debt / self.SHARE_WHEN_SATURATED, self.MIN_PAUSE), self.MAX_PAUSE)
            if self._on_hold is not None:
                self._on_hold(pause)
            await asyncio.sleep(pause)
            debt = self._settle()
        if not self._saturated:
            self._debt = min(self._debt, 0.0)
