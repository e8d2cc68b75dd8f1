"""cancel_and_wait: a task's own failure is logged, not raised; the caller's cancellation is not swallowed;
a task that swallowed its cancellation is said and cancelled again, one that swallows every cancellation
said and abandoned. wait_event: a cancellation ends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from kvgate.k8s.tasks import RECANCELS, cancel_and_wait, finish_shielded, wait_event

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


async def test_a_task_that_swallowed_its_cancellation_is_named_and_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(Before, the stop waited for it forever: a hung CI run.)"""

    async def deaf() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed (as Python 3.11's wait_for may)
            await asyncio.sleep(60)
        await asyncio.sleep(60)

    t = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(t, "the deaf loop", log, stuck_s=0.1)
    assert t.cancelled()
    assert "the deaf loop did not end 0.1s after it was cancelled" in caplog.text


async def test_wait_event_set_expired_and_cancelled_as_set() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    ev.set()
    assert await wait_event(ev, 10.0) is True
    assert await wait_event(asyncio.Event(), -1.0) is False  # (a deadline already past)
    # Cancelled in the turn the event is set: the cancellation is raised, not the event returned
    # (asyncio.wait_for on Python 3.11 returned it: gh-86296).
    ev2 = asyncio.Event()
    waiter = asyncio.create_task(wait_event(ev2, 10.0))
    await asyncio.sleep(0)
    ev2.set()
    waiter.cancel()
    await asyncio.wait([waiter])
    assert waiter.cancelled()


async def test_a_task_that_swallows_every_cancellation_is_abandoned_not_waited_for_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s9-dl D3: the re-cancel loop was unbounded: a task that swallows every cancellation (not
    only the first) made the stop loop forever, re-cancelling and logging each ``stuck_s``."""
    stop = [False]

    async def deaf_forever() -> None:
        while not stop[0]:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)

    t = asyncio.create_task(deaf_forever())
    await asyncio.sleep(0)
    try:
        async with asyncio.timeout(2.0):
            await cancel_and_wait(t, "the deaf loop", log, stuck_s=0.1)
        assert not t.done()  # left running, said
        assert f"the deaf loop did not end 0.1s after it was cancelled {RECANCELS + 1} times" in caplog.text
        assert caplog.text.count("cancelling it again") == RECANCELS
    finally:
        stop[0] = True  # (the test's own cleanup)
        t.cancel()
        await asyncio.wait([t])


async def test_finish_shielded_lets_a_cleanup_end_through_cancels_then_raises() -> None:
    """The waiter is cancelled twice while the cleanup runs: the cleanup is not cut, the waiter raises the
    cancellation once it ended."""
    ended: list[bool] = []

    async def cleanup() -> None:
        await asyncio.sleep(0.3)
        ended.append(True)

    task = asyncio.create_task(cleanup())
    waiter = asyncio.create_task(finish_shielded(task, "the cleanup", log, 5.0))
    for _ in range(2):
        await asyncio.sleep(0.05)
        waiter.cancel()
    await asyncio.wait([waiter], timeout=30)
    assert waiter.cancelled() and ended == [True]


async def test_finish_shielded_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    try:
        async with asyncio.timeout(2):
            await finish_shielded(task, "the cleanup", log, 0.1)
        assert not task.done()  # left to finish on its own, said
        assert "the cleanup still running 0.1s after it started" in caplog.text
    finally:
        task.cancel()
