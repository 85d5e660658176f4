"""Acknowledgements first (receiver/loadshare.py): the governor's arithmetic, and the
timing of background tasks."""

from __future__ import annotations

import asyncio

import pytest

from receiver.loadshare import Governor, IntakeLoad, Occupancy, background_context


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def governed(clock: Clock, *, off_loop: bool = False) -> tuple[Governor, IntakeLoad, Occupancy]:
    intake, occupancy = IntakeLoad(clock), Occupancy()
    governor = Governor(intake, occupancy, clock=clock, database_off_loop=off_loop)
    return governor, intake, occupancy


def test_the_average_number_in_flight_decides_saturation() -> None:
    clock = Clock()
    governor, intake, _ = governed(clock)
    for _ in range(2):  # two callbacks in flight for a whole window: not a flood
        intake.arrived()
    clock.now += Governor.WINDOW * 1.01
    assert not governor.saturated()
    for _ in range(6):  # eight in flight for the next window: a flood
        intake.arrived()
    clock.now += Governor.WINDOW * 1.01
    assert governor.saturated()
    for _ in range(8):  # all answered, nothing comes: the flood is over
        intake.answered()
    clock.now += Governor.WINDOW * 1.01
    assert not governor.saturated()


@pytest.mark.parametrize("off_loop", [True, False], ids=["postgresql", "sqlite"])
def test_callbacks_waiting_for_a_database_elsewhere_are_no_flood(off_loop: bool) -> None:
    # PostgreSQL at a steady 2,000 callbacks/s: a commit takes a couple of milliseconds, so
    # several callbacks wait for theirs at any moment while the loop is mostly idle. On
    # SQLite the commit runs on the loop: those callbacks wait for the loop.
    clock = Clock()
    intake, occupancy = IntakeLoad(clock), Occupancy()
    governor = Governor(intake, occupancy, clock=clock, database_off_loop=off_loop)
    for _ in range(8):
        intake.arrived()
        intake.waiting()
    clock.now += Governor.WINDOW * 1.01
    assert governor.saturated() is not off_loop
    for _ in range(8):  # their commits are done: they are being answered on the loop
        intake.resumed()
    clock.now += Governor.WINDOW * 1.01
    assert governor.saturated()
    for _ in range(8):
        intake.answered()
    assert (intake.in_flight, intake.waiting_now) == (0, 0)


def test_turn_never_waits_while_the_intake_keeps_up() -> None:
    clock = Clock()
    governor, _, occupancy = governed(clock)

    async def main() -> None:
        for _ in range(10):
            occupancy.busy += 1.0  # however much the background takes
            clock.now += Governor.WINDOW * 1.01
            await asyncio.wait_for(governor.turn(), 1)

    asyncio.run(main())
    assert governor.waits == 0


@pytest.mark.parametrize(
    ("off_loop", "in_flight", "waiting", "expected_share"),
    [
        (False, 32, 0, Governor.SHARE_WHEN_SATURATED),
        (True, 32, 0, Governor.SHARE_WHEN_DATABASE_SATURATED),
        (True, 32, 30, Governor.SHARE_WHEN_DATABASE_SATURATED),
        (True, 6, 4, Governor.SHARE_WHEN_SATURATED),
    ],
    ids=["sqlite", "postgresql-both", "postgresql-database", "postgresql-loop"],
)
def test_turn_holds_the_background_to_its_share_during_a_flood(
    off_loop: bool, in_flight: int, waiting: int, expected_share: float
) -> None:
    # With PostgreSQL, 32 callbacks in flight pass the database test (16 or more, whatever
    # each waits for at the moment): the background's statements cost the database too,
    # which the loop's clock does not see, so the smaller share. 6 with 2 of them on the
    # loop pass the loop test only: the tenth.
    clock = Clock()
    governor, intake, occupancy = governed(clock, off_loop=off_loop)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes only when the governor sleeps
        slept.append(seconds)
        clock.now += seconds

    async def main(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(asyncio, "sleep", sleep)
        for _ in range(in_flight):
            intake.arrived()
        for _ in range(waiting):
            intake.waiting()
        clock.now += Governor.WINDOW * 1.01
        busy = 0.0
        started = clock.now
        for _ in range(50):
            await governor.turn()
            occupancy.busy += 0.002  # each piece of background work holds the loop 2 ms
            busy += 0.002
            clock.now += 0.002
        share = busy / (clock.now - started)
        assert share == pytest.approx(expected_share, rel=0.15)

    with pytest.MonkeyPatch.context() as monkeypatch:
        asyncio.run(main(monkeypatch))
    assert governor.waits > 0
    assert min(slept) >= Governor.MIN_PAUSE
    assert max(slept) <= Governor.MAX_PAUSE


def share_after_a_window(governor: Governor, clock: Clock) -> float:
    """The background's share once a window has passed, the governor saturated over it."""
    clock.now += Governor.WINDOW * 1.01
    assert governor.saturated()
    return governor.share


def test_with_postgresql_the_share_follows_what_callbacks_queue_for() -> None:
    # A steady rate the database keeps up with: a few callbacks in flight, one or more of
    # them on the loop. The loop is the bottleneck, and the tenth is its whole cost.
    clock = Clock()
    governor, intake, _ = governed(clock, off_loop=True)
    for _ in range(6):
        intake.arrived()
    for _ in range(4):
        intake.waiting()
    assert share_after_a_window(governor, clock) == Governor.SHARE_WHEN_SATURATED
    # A flood: 32 in flight, most waiting for their commits. The database is the bottleneck.
    for _ in range(26):
        intake.arrived()
        intake.waiting()
    assert share_after_a_window(governor, clock) == Governor.SHARE_WHEN_DATABASE_SATURATED
    # Back to the steady rate.
    for _ in range(26):
        intake.resumed()
        intake.answered()
    assert share_after_a_window(governor, clock) == Governor.SHARE_WHEN_SATURATED


def test_only_tasks_started_in_a_background_context_are_timed() -> None:
    # The timer moves only when a test says so: a step "holds the loop" by moving it, and
    # time that passes while the task is suspended is moved by someone else.
    timer = Clock()
    occupancy = Occupancy(timer=timer)

    async def spin(seconds: float) -> None:
        timer.now += seconds  # holds the loop, as a transaction's statements do
        suspended = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(pass_time, suspended)
        await suspended  # a real suspension, during which a second passes: not counted

    def pass_time(suspended: asyncio.Future[None]) -> None:
        timer.now += 1.0
        suspended.set_result(None)

    async def main() -> None:
        occupancy.install(asyncio.get_running_loop())
        await asyncio.create_task(spin(0.02))
        assert occupancy.busy == 0.0
        await asyncio.create_task(spin(0.02), context=background_context())
        assert occupancy.busy == pytest.approx(0.02)

        async def parent() -> None:  # tasks started by background tasks are background too
            await asyncio.gather(asyncio.create_task(spin(0.02)))

        await asyncio.create_task(parent(), context=background_context())
        assert occupancy.busy == pytest.approx(0.04)

    asyncio.run(main())
