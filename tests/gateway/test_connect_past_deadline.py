"""Review s18-fixes-c M1 (the review's test, kept, plus a connect the deadline ends): a connect that
completes after requestTimeoutSeconds is still followed by the
request's write (``UpstreamPool.request``: ``_connect`` is bounded by connectTimeoutSeconds only, then
``transport.write(head + body)`` with the bound spent): the generation for nobody ba97fa2/ff591bb meant
to rule out ("no attempt starts after requestTimeoutSeconds") still happens on the first attempt, or on a
retry that passed the guard just before the bound; and the client waits past its bound for the connect.

A listener whose backlog is full (SYNs dropped, the gateway's connect retransmits), drained after the
deadline: the gateway's retransmitted SYN then completes and the request is written to it."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, running_gateway


async def test_no_request_is_written_after_the_deadline_when_a_connect_completes_late() -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    hole.setblocking(False)
    port = hole.getsockname()[1]
    filler = [socket.socket() for _ in range(3)]
    for f in filler:
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))  # the backlog takes one, the rest hang
    limits = {"requestTimeoutSeconds": 0.5, "idleTimeoutSeconds": 30, "connectTimeoutSeconds": 8}
    cfg = make_config([f"127.0.0.1:{port}"], extra={"limits": limits})
    got: list[bytes] = []
    accepted: list[socket.socket] = []
    try:
        async with running_gateway(cfg) as gw:
            async with aiohttp.ClientSession() as s:
                body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
                t0 = time.monotonic()
                task = asyncio.ensure_future(s.post(base_url(gw) + "/v1/completions", data=body))
                done_at: list[float] = []
                task.add_done_callback(lambda _t: done_at.append(time.monotonic()))
                await asyncio.sleep(0.7)  # past the request's bound (0.5 s)
                for f in filler:  # make room: the gateway's next SYN retransmission is accepted
                    f.close()
                while True:
                    try:
                        c, _ = hole.accept()
                    except BlockingIOError:
                        break
                    c.close()
                end = time.monotonic() + 6
                while time.monotonic() < end:
                    try:
                        c, _ = hole.accept()
                        c.setblocking(False)
                        accepted.append(c)
                    except BlockingIOError:
                        pass
                    for c in accepted:
                        try:
                            data = c.recv(65536)
                            if data:
                                got.append(data)
                        except BlockingIOError:
                            pass
                    if task.done() and time.monotonic() - t0 > 4:
                        break
                    await asyncio.sleep(0.02)
                r = await task
                status = r.status
                code = orjson.loads(await r.read())["error"]["code"]
                waited = done_at[0] - t0
                r.release()
                st = gw.health._state.get(f"127.0.0.1:{port}")
            assert status == 504, status
            assert code == "request_timeout", code
            assert st is None or st.failures == 0, "the endpoint was charged for the deadline"
            written = b"".join(got)
            assert b"POST" not in written, (
                f"the request was written to the endpoint after its deadline (client answered after "
                f"{waited:.2f}s, bound 0.5s): {written[:80]!r}"
            )
    finally:
        for c in accepted:
            c.close()
        for f in filler:
            f.close()
        hole.close()


async def test_a_connect_the_deadline_ends_is_a_504_at_the_bound_not_charged_to_the_endpoint() -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    filler = [socket.socket() for _ in range(3)]
    for f in filler:
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))  # the backlog is full for the whole test: SYNs dropped
    # connectTimeoutSeconds 2 > requestTimeoutSeconds 0.5: the deadline ends the connect, not the timeout.
    limits = {"requestTimeoutSeconds": 0.5, "idleTimeoutSeconds": 30, "connectTimeoutSeconds": 2}
    cfg = make_config([f"127.0.0.1:{port}"], extra={"limits": limits})
    try:
        async with running_gateway(cfg) as gw:
            async with aiohttp.ClientSession() as s:
                body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
                async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                    status = r.status
                    err = orjson.loads(await r.read())["error"]
            st = gw.health._state.get(f"127.0.0.1:{port}")
        assert status == 504, status
        assert err["code"] == "request_timeout", err
        assert st is None or st.failures == 0, "a connect the deadline ended was charged as a failure"
    finally:
        for f in filler:
            f.close()
        hole.close()
