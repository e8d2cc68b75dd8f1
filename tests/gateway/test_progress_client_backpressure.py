"""The deadline cut's progress rule (``openai/progress.py``) judges what the upstream offered, not how fast
the client read it (review s20-gw M2, a regression of ab79ac5): while a relay waits on a client that does not
read (its buffers full, the write held by back-pressure) the upstream is not read, so no progress can be seen;
that wait is no stretch without progress. Before, a client that read late got an honest, steadily streaming
server charged at the cut, and ejected at the third.

Real loopback, both doors (``kvgate serve``'s relay and ``kvgate serve --clusters``'): a scripted upstream
streams a 128 KiB data event every 50 ms for the whole 4 s bound; the client (a raw socket with a small
receive buffer) sends the request, reads nothing for 3.2 s, then reads everything. ``0.0``: the control,
a client that reads at once (passed before too). Adapted from the review's test.

small36: both run over a 4 s bound, an event every 50 ms: a stretch without progress may be half a second
(an eighth of the bound) before the server is charged, so a loaded machine's stalled event loop (the
upstream in the same process) no longer reads as a wedged server, as it did over 1 s (125 ms: each failed
once under load); ``kvgate serve``'s sends two requests (one to each server, round robin: a charge is a
failure counted, the ejection needs none). Both still fail with the front's waits not told to the
progress (``out.waits`` / ``resp.waits`` removed: 3.2 s of none)."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
from aiohttp import web

from gateway.conftest import backends, make_config, running_gateway  # noqa: F401 (the fixture)
from gateway.handler_server import serve_app
from gateway.sse_upstream import SSE_HEAD, chunk, listen_address, serve_raw
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from kvgate.openai.progress import Progress

BOUND = 4.0
EVENT = b'data: {"choices":[{"index":0,"text":"' + b"a" * (128 << 10) + b'"}]}\n\n'


async def _steady(_body: bytes, w: asyncio.StreamWriter) -> None:
    w.write(SSE_HEAD + chunk(EVENT))
    await w.drain()
    while True:
        await asyncio.sleep(0.05)
        w.write(chunk(EVENT))
        await w.drain()


async def _slow_reader(port: int, i: int, stall: float) -> bytes:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect: a small window)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    body = orjson.dumps({"model": "m", "prompt": f"p{i}", "stream": True})
    head = b"POST /v1/completions HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
    await loop.sock_sendall(
        sock, head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )
    await asyncio.sleep(stall * BOUND)  # (busy elsewhere: reads nothing)
    got = bytearray()
    try:
        async with asyncio.timeout(30):
            while data := await loop.sock_recv(sock, 1 << 20):
                got += data
    finally:
        sock.close()
    return bytes(got)


@pytest.mark.parametrize("stall", [0.0, 0.8])
async def test_a_client_that_reads_late_does_not_charge_a_steady_server(backends, stall: float) -> None:  # noqa: F811
    server = await serve_raw(_steady)
    address = listen_address(server)
    (good,) = await backends(1)
    cfg = make_config(
        [address, good.address],
        extra={
            "limits": {"requestTimeoutSeconds": BOUND, "idleTimeoutSeconds": 30},
            "health": {"ejectAfterFailures": 3, "ejectBaseSeconds": 30, "ejectMaxSeconds": 30},
        },
    )
    try:
        async with running_gateway(cfg) as gw:
            for i in range(2):  # (round robin: one to the steady server)
                out = await _slow_reader(gw.port, i, stall)
                assert out.startswith(b"HTTP/1.1 200"), out[:80]
                assert b"request_timeout" in out or b"stream" in out, out[-200:]  # (cut at the bound)
            st = gw.health._state.get(address)
            failures = 0 if st is None else st.failures
            assert (failures, gw.health.ejections) == (0, 0), (
                f"a steady server charged {failures} failures ({gw.health.ejections} ejections) for a client "
                "that read late"
            )
    finally:
        server.close()


async def _steady_app(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    while True:
        await resp.write(EVENT)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stall", [0.0, 0.8])
async def test_clusters_a_client_that_reads_late_does_not_charge_a_steady_cluster(stall: float) -> None:
    """``kvgate serve --clusters``: the same rule over its ``limits.requestTimeoutSeconds`` (``_Late``)."""
    app = web.Application()
    app.router.add_post("/v1/completions", _steady_app)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    spec = ClusterSpec("east", gateway=f"127.0.0.1:{port}")
    cfg = ClustersConfig((spec,), request_timeout_s=BOUND)
    gw = GlobalGateway(cfg, "round-robin", fetch=False, seed=1)
    await gw.start("127.0.0.1", 0)
    try:
        out = await _slow_reader(gw.port, 0, stall)
        assert out.startswith(b"HTTP/1.1 200"), out[:80]
        assert b"request_timeout" in out, out[-300:]  # (cut at the bound: its error event)
        st = gw.router.states["east"]
        assert st.backoff_s == 0, (
            f"a steady cluster charged (backs off {st.backoff_s} s) for a client that read late"
        )
    finally:
        await gw.stop()
        await runner.cleanup()


def test_time_waiting_on_the_client_is_no_stretch_without_progress() -> None:
    """Unit: Progress(0, 8): the later half is 4..8 s, a stretch of 1 s at most without progress."""
    p = Progress(0.0, 8.0)
    p.seen(3.0)
    p.waiting(3.1)  # (a write waits on the client from before the half ...)
    p.resumed(6.5)  # (... to 6.5 s: 2.5 s of the half, none of it a gap)
    p.seen(6.6)
    p.seen(7.5)
    assert p.steady()
    p = Progress(0.0, 8.0)
    p.seen(4.5)
    p.waiting(4.6)
    p.resumed(5.0)
    p.seen(6.2)  # (1.2 s after the wait ended: a gap of 1.2 s over 1 s: the wait does not hide it)
    p.seen(7.9)
    assert not p.steady()
    p = Progress(0.0, 8.0)
    for at in (4.5, 5.3, 6.0):
        p.seen(at)
    p.waiting(6.5)  # (still waiting on the client at the cut: 1.5 s with no progress seen, none a gap)
    assert p.steady()
    p = Progress(0.0, 8.0)
    for at in (4.5, 5.0):
        p.seen(at)
    p.waiting(5.5)
    p.resumed(5.6)
    assert not p.steady()  # (after the wait, 2.4 s of nothing to the cut)
