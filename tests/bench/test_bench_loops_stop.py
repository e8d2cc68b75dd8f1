"""The benches' loops that wait for a stop event (the live run's load sampler, the soak's replica
restarter) end cancelled when cancelled as they are woken: the event set in the same event-loop turn as the
cancellation (Ctrl-C), or one or two turns before it. (Before, on Python 3.11, their
``asyncio.wait_for(stop.wait(), ...)`` returned and dropped the cancellation, CPython gh-86296.)"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, cast

import aiohttp
import pytest

from kvgate.bench import live, soak


async def _woken_then_cancelled(task: asyncio.Task[Any], stop: asyncio.Event, steps: int) -> None:
    await asyncio.sleep(0.05)  # waiting for its next turn
    assert not task.done()
    stop.set()
    for _ in range(steps):
        await asyncio.sleep(0)
    ended_before = task.done()  # (it may have returned on its own by then: the cancel comes too late)
    if steps == 0:
        # No turn since the wake: the cancel must land on a live task, or this case tests nothing.
        assert not ended_before, "the loop ended before it was cancelled"
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
    assert task.done(), "it went on after it was cancelled"
    assert ended_before or task.cancelled(), "the cancellation was swallowed"


@pytest.mark.parametrize("steps", [0, 1, 2])
async def test_the_live_sampler_woken_as_it_is_cancelled_ends_cancelled(steps: int) -> None:
    stop = asyncio.Event()
    samples = []

    async def sample() -> None:
        samples.append(1)

    task = asyncio.create_task(live.every(60.0, sample, stop))
    await _woken_then_cancelled(task, stop, steps)
    assert samples == [1]


@pytest.mark.parametrize("steps", [0, 1, 2])
async def test_the_soak_restarter_woken_as_it_is_cancelled_ends_cancelled(steps: int) -> None:
    s = soak.Soak(argparse.Namespace(seed=0, restart_every=60.0, replicas=1))
    task = asyncio.create_task(s.restarter(cast(aiohttp.ClientSession, None)))
    await _woken_then_cancelled(task, s.stop, steps)
    assert s.tally.restarts == 0


class _Conn:
    """A stand-in connection for the soak's bad clients: reads answer when the test says so."""

    def __init__(self, answers: list[asyncio.Future[bytes]]) -> None:
        self.answers = answers
        self.transport = self

    async def _answer(self, *_a: Any) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.answers.append(fut)
        return await fut

    readuntil = read = _answer

    def write(self, _data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.mark.parametrize("client", ["disconnector", "slowloris"])
@pytest.mark.parametrize("steps", [0, 1, 2])
async def test_the_soaks_bad_clients_answered_as_they_are_cancelled_end(
    client: str, steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disconnector / slowloris client whose read is answered as the run is cancelled (Ctrl-C; or
    ``asyncio.run`` cancelling what is left at its end). Before, ``asyncio.wait_for`` returned the read
    and dropped the cancel: the client looped on, and ``asyncio.run``'s shutdown waited for it forever."""
    answers: list[asyncio.Future[bytes]] = []

    async def open_connection(*_a: Any, **_kw: Any) -> tuple[_Conn, _Conn]:
        c = _Conn(answers)
        return c, c

    monkeypatch.setattr(soak.asyncio, "open_connection", open_connection)
    s = soak.Soak(argparse.Namespace(seed=0, header_timeout=-10.0))
    task = asyncio.create_task(getattr(s, client)())
    for _ in range(20):
        if answers:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    answers[0].set_result(b"HTTP/1.1 408 x" if client == "slowloris" else b"data: ")
    for _ in range(steps):
        await asyncio.sleep(0)
    ended_before = task.done()
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
    try:
        assert task.done(), "the client went on after it was cancelled"
        assert ended_before or task.cancelled(), "the cancellation was swallowed"
    finally:
        s.stop.set()
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
