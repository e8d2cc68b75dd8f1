"""The upstream pool's connect raises the request's cancellation (its client left) even when the
connection completes in the same turn. (Before, Python 3.11's ``asyncio.wait_for(create_connection(...),
connect_timeout)`` returned the connection and dropped the cancel, CPython gh-86296: the request went on
upstream for a client that had gone.) The connection is made by a stand-in ``create_connection`` the test
completes at the chosen turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvgate.gateway.upstream import UpstreamPool, UpstreamTimeout


@pytest.mark.parametrize("steps", [0, 1])
async def test_a_connect_completing_as_the_request_is_cancelled_raises_the_cancel(
    steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[None] = loop.create_future()

    async def create_connection(factory: Any, *_a: Any, **_kw: Any) -> tuple[Any, Any]:
        proto = factory()
        await made
        return None, proto

    monkeypatch.setattr(loop, "create_connection", create_connection)
    pool = UpstreamPool(connect_timeout=30.0, idle_timeout=None)
    task = asyncio.create_task(pool._connect("127.0.0.1:9", None))
    await asyncio.sleep(0)
    made.set_result(None)
    for _ in range(steps):
        await asyncio.sleep(0)
    ended_before = task.done()
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
    assert ended_before or task.cancelled(), "the cancellation was swallowed"
    assert ended_before or not pool._open


async def test_a_connect_past_its_timeout_is_an_upstream_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def create_connection(*_a: Any, **_kw: Any) -> tuple[Any, Any]:
        await asyncio.sleep(60)
        raise AssertionError

    monkeypatch.setattr(loop, "create_connection", create_connection)
    with pytest.raises(UpstreamTimeout):
        await UpstreamPool(connect_timeout=0.01, idle_timeout=None)._connect("127.0.0.1:9", None)
