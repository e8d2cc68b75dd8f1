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


def test_a_closed_delay_relay_runs_no_connection_accepted_just_before_its_close() -> None:
    """Review s13-hard L3: ``_close`` cancelled a snapshot of ``_tasks`` taken after ``server.close()``; a
    connection accepted just before, whose ``_handle`` task had not run yet (it adds itself in its first
    step), was not in it and was relayed after ``close()`` returned (fails before, with the close 2 or 3
    loop turns after the client's connect). Now its task resets it without relaying. Tried with the close
    landing 0, 1, 2, ... loop turns after the client's connect."""
    import socket

    async def main() -> list[int]:
        async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()
            w.close()

        target = await asyncio.start_server(hold, "127.0.0.1", 0)
        tport = target.sockets[0].getsockname()[1]
        bad = []
        for n in range(12):
            relay = DelayRelay(Route("127.0.0.1", 0, "127.0.0.1", tport, 0.0), handshake=False)
            await relay.start()
            s = socket.create_connection(("127.0.0.1", relay.port))  # (in the backlog: accepted later)
            s.setblocking(False)
            for _ in range(n):
                await asyncio.sleep(0)
            await relay.close()
            await asyncio.sleep(0.2)
            if relay._tasks:  # (a relayed connection running after the close returned)
                bad.append(n)
            s.close()
            await asyncio.sleep(0.05)
            if relay._tasks:
                await relay.close()
        target.close()
        return bad

    bad = asyncio.run(main())
    assert not bad, f"a connection relayed after close() returned, with the close {bad} loop turns after it"
