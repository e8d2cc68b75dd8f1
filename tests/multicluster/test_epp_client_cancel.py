"""The global gateway's ext_proc client: a step the EPP must complete within its deadline (``_within``)
raises the request's cancellation (its client left) even when the EPP's answer arrives in the same turn.
(Before, Python 3.11's ``asyncio.wait_for(step, timeout)`` returned the answer and dropped the cancel,
CPython gh-86296: the request went on to the pod for a client that had gone.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from kvgate.multicluster.epp_client import EppStalled, EppStream


@pytest.mark.parametrize("steps", [0, 1])
async def test_a_step_answered_as_the_request_is_cancelled_raises_the_cancel(steps: int) -> None:
    stream = EppStream(None, timeout_s=30.0, clock=time.monotonic)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(stream._within(answer, "pick"))
    await asyncio.sleep(0)
    answer.set_result("the EPP's answer")
    for _ in range(steps):
        await asyncio.sleep(0)
    ended_before = task.done()
    task.cancel()
    await asyncio.wait([task], timeout=30.0)
    assert ended_before or task.cancelled(), "the cancellation was swallowed"


async def test_a_step_past_the_deadline_is_a_stall() -> None:
    stream = EppStream(None, timeout_s=0.01, clock=time.monotonic)
    with pytest.raises(EppStalled):
        await stream._within(asyncio.get_running_loop().create_future(), "pick")
    assert stream.stalled == "pick"
    assert await stream._within(asyncio.sleep(0, "ok"), "pick") == "ok"
