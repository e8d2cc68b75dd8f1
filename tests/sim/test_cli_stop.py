"""``kvgate sim`` waits for its stop signal (or ``--duration``) in a way a cancellation always ends: woken by
SIGINT / SIGTERM (``stop.set()``) in the same event-loop turn as a cancellation, or one or two turns before
it, the wait raises the cancellation. (Before, on Python 3.11, ``asyncio.wait_for(stop.wait(), duration)``
returned instead: CPython gh-86296.)"""

from __future__ import annotations

import asyncio

import pytest

from kvgate.sim.cli import _wait_stop


@pytest.mark.parametrize("steps", [0, 1, 2])
async def test_the_stop_wait_woken_as_it_is_cancelled_ends_cancelled(steps: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(_wait_stop(stop, 60.0))
    await asyncio.sleep(0)
    stop.set()
    for _ in range(steps):
        await asyncio.sleep(0)
    ended_before = task.done()  # (it may have returned on its own by then: the cancel comes too late)
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
    assert ended_before or task.cancelled(), "the cancellation was swallowed"


async def test_the_stop_wait_ends_at_the_duration_or_the_signal() -> None:
    await asyncio.wait_for(_wait_stop(asyncio.Event(), 0.01), 1.0)
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(_wait_stop(stop, None), 1.0)


async def test_the_stop_wait_is_kvgate_aio_wait_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """No copy of its own (left11): a fix to ``kvgate.aio.wait_event`` reaches ``kvgate sim``."""
    import kvgate.aio
    from kvgate.sim import cli

    calls: list[float] = []
    real = kvgate.aio.wait_event

    async def spy(event: asyncio.Event, timeout_s: float) -> bool:
        calls.append(timeout_s)
        return await real(event, timeout_s)

    monkeypatch.setattr(kvgate.aio, "wait_event", spy)
    monkeypatch.setattr(cli, "wait_event", spy, raising=False)
    await cli._wait_stop(asyncio.Event(), 0.01)
    assert calls == [0.01]
