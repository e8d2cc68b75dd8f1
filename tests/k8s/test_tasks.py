"""cancel_and_wait: a task's own failure is logged, not raised; the caller's cancellation is not swallowed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kvgate.k8s.tasks import cancel_and_wait

log = logging.getLogger("test_tasks")


async def test_a_task_that_failed_on_its_own_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    t = asyncio.create_task(broken())
    await asyncio.sleep(0)
    await cancel_and_wait(t, "the loop", log)  # does not raise
    assert "the loop had stopped: RuntimeError('a bug')" in caplog.text


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    """The task takes a while to wind down; the caller is cancelled meanwhile: the caller ends cancelled
    (``with suppress(CancelledError): await task`` went on as if nothing happened)."""

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # winding down
            raise

    t = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(t, "the loop", log))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await asyncio.wait([t])
    assert t.cancelled()
