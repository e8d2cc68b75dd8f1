"""The ext_proc test harness's ``Exchange.read`` raises a cancellation that lands in the turn an answer
arrives. It waited with ``asyncio.wait_for``, which on Python 3.11 returns the answer instead (CPython
gh-86296): a test cancelling its client then read on as if nothing happened. (The last ``wait_for`` in
``src/``.)"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.extproc.testing import Exchange


async def test_a_read_cancelled_as_its_answer_arrives_raises_the_cancel() -> None:
    swallowed = []
    for turns in range(6):  # the cancel lands 0..5 loop turns after the answer is queued
        ex = Exchange(cast(Any, None), timeout=30)
        reader = asyncio.create_task(ex.read())
        for _ in range(3):
            await asyncio.sleep(0)  # (the read is waiting)
        ex._replies.put_nowait(pb.ProcessingResponse())
        for _ in range(turns):
            await asyncio.sleep(0)
        if reader.done():
            continue  # (answered before the cancel: nothing to check at this offset)
        reader.cancel()
        await asyncio.wait([reader])
        if not reader.cancelled():
            swallowed.append(turns)
    assert swallowed == []
