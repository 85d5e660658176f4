"""Small asyncio helpers shared by the worker loops."""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, returning early when ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
