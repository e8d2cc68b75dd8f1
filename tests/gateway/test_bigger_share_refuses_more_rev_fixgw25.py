"""rev-fixgw25 F3: past half of the limit, the all-clients bound ``limit - share`` is checked first. With a
configured share over half the limit (limits.maxWaitingBytesPerClient, allowed up to maxBufferedBytes - 1)
``limit - share`` is below the pressure line itself, so once the waiting bytes pass half, *every* body is
refused, a client with nothing waiting included: raising the per-client share makes the gateway refuse more.
Here: A has 400 of 1000 bytes on the thread; B (nothing waiting) sends 200. With the default share (250) B
goes; with share 600 B gets ShareFull (everyone). Fails on f2e12c1f; a7dbe3b2 (no pressure rule) lets B go."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kvgate.httpfront.offload import off_loop


@pytest.mark.parametrize("share", [250, 600])
async def test_a_client_with_nothing_waiting_goes_whatever_the_share(share: int) -> None:
    limit = 1000
    release = threading.Event()
    entered = threading.Event()

    def held(body: bytes) -> int:
        entered.set()
        release.wait(10)
        return len(body)

    def call(body: bytes, client: str) -> asyncio.Future[int]:
        try:
            return asyncio.ensure_future(off_loop(held if client == "A" else len, body, client, share, limit))
        except TypeError:  # (a7dbe3b2: no limit)
            return asyncio.ensure_future(off_loop(held if client == "A" else len, body, client, share))

    a = call(b"a" * 400, "A")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not entered.is_set():
        assert loop.time() < deadline, "A's parse never started"
        await asyncio.sleep(0.01)
    b = call(b"b" * 200, "B")
    try:
        await asyncio.sleep(0)
        assert not (b.done() and b.exception() is not None), b.exception()
    finally:
        release.set()
        await asyncio.gather(a, b, return_exceptions=True)
    assert await b == 200
