"""Acknowledgements first: how much of the event loop the background work may take.

``signback serve`` answers callbacks and, on the same event loop, runs the pipeline and the
outbox dispatcher. A provider waits for the acknowledgement (some give 5 seconds, and
retries what it does not get), while the work after it may lag a little. So when callbacks
pour in faster than the loop can answer them *and* do the work behind them, the work waits:

- :class:`IntakeLoad` counts the callbacks being answered at each moment (and, apart,
  those of them on the loop: not waiting for the database or for their body): while the
  intake keeps up, that is a handful; when callbacks queue up, it is many;
- :class:`Occupancy` measures how long background tasks hold the loop. Tasks started from
  a context marked with :func:`background_context` (the worker's) are wrapped by the loop's
  task factory, which times each of their steps;
- :class:`Governor` is asked by the background loops before each piece of work
  (:meth:`Governor.turn`). While callbacks queue up (on average ``SATURATED_IN_FLIGHT``
  or more being answered at once; with PostgreSQL, whose commits are done elsewhere, the
  loop's or the database's share of them, see :class:`Governor`), it keeps the
  background's share of the loop at ``SHARE_WHEN_SATURATED``, a tenth (with PostgreSQL,
  ``SHARE_WHEN_DATABASE_SATURATED``, a twentieth, while ``SATURATED_IN_FLIGHT_OFF_LOOP``
  or more are in flight); otherwise it never holds anything up. Under a steady load the
  loop can carry, the background gets whatever the intake leaves; in a flood, the
  acknowledgements get nine tenths of the loop or more and the backlog is worked off
  afterwards.
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

    ``loop_area`` is the same for the callbacks on the loop: not those waiting for the
    database or for their body (:meth:`waiting` … :meth:`resumed`). When the database works
    in another process (PostgreSQL), a callback waiting for its commit waits for no one on
    the loop; counting it made a steady load look like a flood (see :class:`Governor`)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.in_flight = 0
        self.waiting_now = 0
        self._area = 0.0
        self._loop_area = 0.0
        self._at = clock()

    def _accrue(self) -> None:
        now = self._clock()
        elapsed = now - self._at
        self._area += self.in_flight * elapsed
        self._loop_area += (self.in_flight - self.waiting_now) * elapsed
        self._at = now

    def arrived(self) -> None:
        self._accrue()
        self.in_flight += 1

    def answered(self) -> None:
        self._accrue()
        self.in_flight -= 1

    def waiting(self) -> None:
        """A callback being answered now waits for the database or for its body."""
        self._accrue()
        self.waiting_now += 1

    def resumed(self) -> None:
        """That wait is over (or failed): it is being answered on the loop again."""
        self._accrue()
        self.waiting_now -= 1

    @property
    def area(self) -> float:
        self._accrue()
        return self._area

    @property
    def loop_area(self) -> float:
        self._accrue()
        return self._loop_area


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
    """Decides when background work may take its next piece (see the module doc).

    Saturated: on average ``SATURATED_IN_FLIGHT`` or more callbacks in flight over the last
    window. On SQLite the statements run on the loop, so a callback waiting for its commit
    waits for the loop, and that is the whole test. When the database works in another
    process (``database_off_loop``: PostgreSQL) a commit is a round trip away: at 2,000
    callbacks/s and 2 ms per commit four are waiting at any moment while the loop is mostly
    idle, and that test alone held the background to a tenth of an idle loop, so the work
    fell further behind the more callbacks came. There the intake is saturated when either
    of its two resources is:

    - the loop: ``SATURATED_ON_LOOP`` or more callbacks on it (not waiting for the database
      or their body). By Little's law that is their rate times the time each spends on the
      loop or waiting for its turn: while the loop keeps up, the intake's share of it
      (under one); once they queue for it (a commit answers a batch at once, each waiting
      for those before it), more;
    - the database: ``SATURATED_IN_FLIGHT_OFF_LOOP`` or more in flight in all, most of them
      waiting for commits (a wrk flood keeps all its 32 connections waiting). The
      background's statements then compete with the callbacks' commits for the database,
      and holding them back is what gives the acknowledgements their share.

    The share is measured on the loop only, which is the background's whole cost on
    SQLite. With PostgreSQL each background statement also costs the database its work,
    which the loop's clock does not see, and it competes with the commits the callbacks
    wait for: in a flood, with a tenth of the loop, the background's statements took
    PostgreSQL another 0.12 to 0.17 of a core, and the intake lost a fifth to a third of
    its rate to the worker instead of a tenth (docs/performance.md, issue 20's eighth and
    ninth parts). So while the database test holds (``SATURATED_IN_FLIGHT_OFF_LOOP`` or
    more in flight, whatever each is waiting for at the moment), the background gets
    ``SHARE_WHEN_DATABASE_SATURATED`` of the loop, half the tenth, which puts its whole cost
    near the tenth meant. While only the loop test holds (fewer in flight, as at a steady
    rate below the intake's capacity), it keeps the tenth, and the processing keeps more
    pace. The count is the test because it is what separates the two in practice: a
    higher threshold (24) missed most of a wrk flood's windows, and a steady 2,000
    callbacks/s, about ten in flight, reaches 16 in some windows and is held back a little
    more than with a tenth.
    """

    SHARE_WHEN_SATURATED = 0.1  # the background's share of the loop during a flood
    SHARE_WHEN_DATABASE_SATURATED = 0.05  # the same, by the database test (PostgreSQL)
    SATURATED_IN_FLIGHT = 4.0  # callbacks being answered at once, on average, in a flood
    SATURATED_ON_LOOP = 1.0  # of which on the loop (the database working elsewhere)
    SATURATED_IN_FLIGHT_OFF_LOOP = 16.0  # in all, the database working elsewhere
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
        database_off_loop: bool = False,
    ) -> None:
        self.intake = intake
        self._on_hold = on_hold  # told each pause's length (the metrics count them)
        self._off_loop = database_off_loop
        self.share = self.SHARE_WHEN_SATURATED  # of the loop's time, while saturated
        self.occupancy = occupancy
        self._clock = clock
        now = clock()
        self._mark = (now, intake.area, intake.loop_area)
        self._saturated = False
        self._debt = 0.0  # background seconds beyond its share while saturated
        self._debt_at = (now, occupancy.busy)
        self.waits = 0  # times turn() held the background back (for tests and metrics)

    def saturated(self) -> bool:
        """Callbacks queued up during the last window (see the class doc)."""
        now = self._clock()
        since, area, loop_area = self._mark
        if now - since >= self.WINDOW:
            area_now, loop_area_now = self.intake.area, self.intake.loop_area
            elapsed = now - since
            in_flight = (area_now - area) / elapsed
            on_loop = (loop_area_now - loop_area) / elapsed
            if not self._off_loop:
                self._saturated = in_flight >= self.SATURATED_IN_FLIGHT
            else:
                database_bound = in_flight >= self.SATURATED_IN_FLIGHT_OFF_LOOP
                loop_bound = (
                    in_flight >= self.SATURATED_IN_FLIGHT and on_loop >= self.SATURATED_ON_LOOP
                )
                self._saturated = database_bound or loop_bound
                self.share = (
                    self.SHARE_WHEN_DATABASE_SATURATED
                    if database_bound
                    else self.SHARE_WHEN_SATURATED
                )
            self._mark = (now, area_now, loop_area_now)
        return self._saturated

    def _settle(self) -> float:
        """Add the background time since the last call, less its share of the wall time."""
        now = self._clock()
        then, busy_then = self._debt_at
        busy = self.occupancy.busy
        self._debt += (busy - busy_then) - self.share * (now - then)
        self._debt = max(self._debt, -self.MAX_CREDIT)
        self._debt_at = (now, busy)
        return self._debt

    async def turn(self) -> None:
        """Wait, if need be, until the background may take its next piece of work."""
        debt = self._settle()
        while debt > self.TOLERANCE and self.saturated():
            self.waits += 1
            pause = min(max(debt / self.share, self.MIN_PAUSE), self.MAX_PAUSE)
            if self._on_hold is not None:
                self._on_hold(pause)
            await asyncio.sleep(pause)
            debt = self._settle()
        if not self._saturated:
            self._debt = min(self._debt, 0.0)
