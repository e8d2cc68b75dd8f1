"""The delay relay's connect to its target raises a cancellation (the relay stopping) that lands as the
connection completes. (Before, Python 3.11's ``asyncio.wait_for(open_connection(...), ...)`` returned the
connection and dropped the cancel, CPython gh-86296: the relay went on relaying for a stopped relay.) The
target connection is a stand-in the test completes at the chosen turn."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from kvgate.bench import delay_relay
from kvgate.bench.delay_relay import DelayRelay, Route


class _Stream:
    def __init__(self) -> None:
        self.transport = self

    def get_extra_info(self, _name: str) -> None:
        return None

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def read(self, _n: int = -1) -> bytes:
        await asyncio.sleep(3600)
        return b""


@pytest.mark.parametrize("steps", [0, 1])
async def test_a_connect_completing_as_the_relay_is_cancelled_raises_the_cancel(
    steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def open_connection(*_a: Any, **_kw: Any) -> tuple[_Stream, _Stream]:
        await connected
        return _Stream(), _Stream()

    monkeypatch.setattr(delay_relay.asyncio, "open_connection", open_connection)
    relay = DelayRelay(Route("127.0.0.1", 0, "127.0.0.1", 9, 0.0))
    down = _Stream()
    task = asyncio.create_task(
        relay._relay(cast(asyncio.StreamReader, down), cast(asyncio.StreamWriter, down))
    )
    await asyncio.sleep(0)
    connected.set_result(None)
    for _ in range(steps):
        await asyncio.sleep(0)
    ended_before = task.done()
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
    try:
        assert task.done(), "the relay went on after it was cancelled"
        assert ended_before or task.cancelled(), "the cancellation was swallowed"
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
