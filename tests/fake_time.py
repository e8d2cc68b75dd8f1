"""Injected time for tests: ``clock`` and ``sleep`` (the pair kvgate's components take), moved only by the
test (``advance``), so a deadline passes exactly when the test says so, however loaded the machine."""

from __future__ import annotations

import asyncio


class FakeTime:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._moved = asyncio.Event()
        self._wakes: list[float] = []  # when each pending ``sleep`` ends

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        self._wakes.append(until)
        try:
            while self.now < until:
                await self._moved.wait()
        finally:
            self._wakes.remove(until)

    def next_wake(self) -> float | None:
        """When the first pending ``sleep`` ends (None: nothing sleeps)."""
        return min(self._wakes, default=None)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
