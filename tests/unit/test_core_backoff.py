"""The one backoff (receiver/backoff.py): its arithmetic, and the loops that use it."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path

import pytest

from receiver import backoff
from receiver.app import build_context
from receiver.backoff import Backoff, Jitter, delay, sleep_or_stop
from receiver.logs import configure_logging
from receiver.worker import Worker
from tests.conftest import test_settings

ALMOST_ONE = 1.0 - 1e-12


class Draws(random.Random):
    """A random source that returns the given draws, in turn."""

    def __init__(self, *draws: float) -> None:
        super().__init__()
        self._draws = itertools.cycle(draws)

    def random(self) -> float:
        return next(self._draws)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (61, 30.0), (10**6, 30.0)],
)
@pytest.mark.parametrize("rand", [0.0, 0.25, ALMOST_ONE])
def test_equal_jitter_stays_between_half_and_the_whole_ceiling(
    attempt: int, ceiling: float, rand: float
) -> None:
    got = delay(attempt, base=1.0, cap=30.0, rand=rand)
    assert got == pytest.approx(ceiling * (0.5 + 0.5 * rand))
    assert ceiling / 2 <= got <= ceiling


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (4, 8.0), (100, 30.0)])
@pytest.mark.parametrize("rand", [0.0, 0.5, ALMOST_ONE])
def test_full_jitter_spreads_over_the_whole_ceiling(
    attempt: int, ceiling: float, rand: float
) -> None:
    got = delay(attempt, base=1.0, cap=30.0, rand=rand, jitter=Jitter.FULL)
    assert got == pytest.approx(ceiling * rand)


def test_a_backoff_doubles_until_its_cap_and_starts_over_after_a_success() -> None:
    loop = Backoff(0.5, 4.0, rand=lambda: ALMOST_ONE)
    delays = [loop.next_delay() for _ in range(6)]
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
    loop.reset()
    assert loop.next_delay() == pytest.approx(0.5)


def test_jitter_comes_from_the_injected_random() -> None:
    draws = itertools.cycle([0.0, ALMOST_ONE])
    loop = Backoff(1.0, 100.0, rand=lambda: next(draws))
    assert [loop.next_delay() for _ in range(4)] == pytest.approx([0.5, 2.0, 2.0, 8.0])


@pytest.mark.anyio
async def test_the_injected_sleep_is_what_waits() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    loop = Backoff(1.0, 10.0, rand=lambda: 0.0, sleep=sleep)
    for _ in range(3):
        await loop.sleep(loop.next_delay())
    assert slept == [0.5, 1.0, 2.0]


@pytest.mark.anyio
async def test_the_test_switch_removes_the_waiting() -> None:
    loop = Backoff(3_600.0, 3_600.0)
    with backoff.testing():
        # An hour's wait ends within the guard: the switch yields instead of sleeping.
        await asyncio.wait_for(loop.sleep(loop.next_delay()), 60)
    assert loop.failures == 1


@pytest.mark.anyio
async def test_a_stop_ends_the_wait() -> None:
    stopping = asyncio.Event()
    waiting = asyncio.create_task(sleep_or_stop(stopping, 3_600.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    stopping.set()
    await asyncio.wait_for(waiting, 60)


def test_the_supervisor_restarts_a_crashed_loop_with_growing_jittered_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = test_settings(f"sqlite:///{tmp_path / 'signback.db'}")
    configure_logging("INFO", "json")
    runs: list[int] = []

    async def flaky(_stopping: asyncio.Event) -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise RuntimeError(f"crash {len(runs)}")

    async def supervise() -> None:
        ctx = build_context(settings)
        try:
            with backoff.testing():
                await Worker(ctx, rand=Draws(0.0, 0.5, 0.0))._supervised("flaky", flaky)
        finally:
            await ctx.db.close()

    asyncio.run(supervise())
    assert runs == [0, 1, 2, 3]  # three crashes, three restarts, then it returned
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    waits = [line["retry_in"] for line in lines if line["event"].startswith("worker loop crashed")]
    # Ceilings 0.5, 1 and 2 s, each jittered by its draw: between half and the whole of it.
    assert waits == [0.25, 0.75, 1.0]
