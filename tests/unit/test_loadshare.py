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


def governed(clock: Clock) -> tuple[Governor, IntakeLoad, Occupancy]:
    intake, occupancy = IntakeLoad(clock), Occupancy()
    return Governor(intake, occupancy, clock=clock), intake, occupancy


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


def test_turn_holds_the_background_to_its_share_during_a_flood() -> None:
    clock = Clock()
    governor, intake, occupancy = governed(clock)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes only when the governor sleeps
        slept.append(seconds)
        clock.now += seconds

    async def main(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(asyncio, "sleep", sleep)
        for _ in range(32):
            intake.arrived()
        clock.now += Governor.WINDOW * 1.01
        busy = 0.0
        started = clock.now
        for _ in range(50):
            await governor.turn()
            occupancy.busy += 0.002  # each piece of background work holds the loop 2 ms
            busy += 0.002
            clock.now += 0.002
        share = busy / (clock.now - started)
        assert share == pytest.approx(Governor.SHARE_WHEN_SATURATED, rel=0.15)

    with pytest.MonkeyPatch.context() as monkeypatch:
        asyncio.run(main(monkeypatch))
    assert governor.waits > 0
    assert min(slept) >= Governor.MIN_PAUSE
    assert max(slept) <= Governor.MAX_PAUSE


def test_only_tasks_started_in_a_background_context_are_timed() -> None:
    occupancy = Occupancy()

    async def spin(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:  # holds the loop, as a transaction's statements do
            pass
        await asyncio.sleep(0.01)  # a real suspension: not counted

    async def main() -> None:
        occupancy.install(asyncio.get_running_loop())
        await asyncio.create_task(spin(0.02))
        assert occupancy.busy == 0.0
        await asyncio.create_task(spin(0.02), context=background_context())
        first = occupancy.busy
        assert 0.02 <= first < 0.03

        async def parent() -> None:  # tasks started by background tasks are background too
            await asyncio.gather(asyncio.create_task(spin(0.02)))

        await asyncio.create_task(parent(), context=background_context())
        assert 0.04 <= occupancy.busy < 0.05

    asyncio.run(main())
