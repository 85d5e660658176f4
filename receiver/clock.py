"""Time comes from an injected clock, so tests can move it; nothing calls time.time() directly."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float:
        """Unix seconds."""
        ...


def system_clock() -> float:
    return time.time()


class FrozenClock:
    """A clock for tests: stands still until moved."""

    def __init__(self, now: float = 1_760_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
