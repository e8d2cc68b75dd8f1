"""The flow dispatcher's task ends when cancelled (the event loop's shutdown cancels it), even as it is
woken: a ``notify()`` (a request finished) in the same event-loop turn as the cancellation, or one or
two turns before it. (Before, on Python 3.11, its ``asyncio.wait_for(wake.wait(), recheck_interval)``
returned the wake-up and dropped the cancellation (CPython gh-86296): with requests queued the task
went on, and whoever waited for it to end hung.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher
from kvgate.scheduling.types import InferenceRequest, PickResult


def _pick(req: InferenceRequest, explain: bool) -> PickResult:
    return PickResult([Endpoint("10.0.0.1:8000")], "default")


@pytest.mark.parametrize("steps", [0, 1, 2])
async def test_the_dispatch_loop_woken_as_it_is_cancelled_ends(steps: int) -> None:
    fd = FlowDispatcher(
        FlowController(FlowControlConfig(ttl=60.0)),
        pick=_pick,
        saturated=lambda _r: True,  # the request stays queued: the loop waits for its next pass
        clock=time.monotonic,
        recheck_interval=60.0,
    )
    waiter = asyncio.create_task(fd.admit(InferenceRequest("r1", "m", prompt_tokens=10, max_tokens=4)))
    task = None
    try:
        await asyncio.sleep(0.05)
        task = fd._task
        assert task is not None and not task.done() and len(fd) == 1
        fd.notify()
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done, "the dispatch loop went on after it was cancelled as it was woken"
        assert task.cancelled()
    finally:
        waiter.cancel()
        await asyncio.wait([waiter], timeout=1.0)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
