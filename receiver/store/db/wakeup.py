"""In-process wake-ups: one asyncio.Event per channel."""

from __future__ import annotations

import asyncio
import contextlib


class Wakeups:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, channel: str) -> asyncio.Event:
        event = self._events.get(channel)
        if event is None:
            event = self._events[channel] = asyncio.Event()
        return event

    def set(self, channel: str) -> None:
        self._event(channel).set()

    async def wait(self, channel: str, timeout: float) -> bool:
        event = self._event(channel)
        if not event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        woken = event.is_set()
        event.clear()
        return woken
