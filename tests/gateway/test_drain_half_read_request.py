"""Review s17-doors F2 (pre-existing, found checking 59d37cd's claim that a reset during the drain only
hits connections the gateway never accepted): ``FrontServer.drain`` closed every connection with no
handler task and no queued request, and that included one the gateway accepted whose request head or body
was still arriving (``_pending`` / ``buf`` non-empty), or whose bytes sat unread in the kernel. Its client,
which had sent (part of) a request, got its connection closed (a reset when its further bytes arrived:
close with unread data) and no answer, although docs/gateway.md says the drain waits for busy connections
("idle ones close now, busy ones after their response") and answers a new request on a kept-alive
connection 503. Now such a request is read and answered (503 with ``Connection: close`` from
``kvgate serve``), within the drain deadline, even with nothing else in flight; only idle connections
close at once. Each test fails on the code before the fix.
"""

from __future__ import annotations

import asyncio

import orjson

from gateway.conftest import make_config, make_pools
from kvgate.gateway.server import GatewayServer
from kvgate.httpfront.server import FrontProtocol, FrontServer, Request, Response


async def test_a_request_half_received_when_the_drain_starts_is_answered(backends):
    (b,) = await backends(1, tokens=50, chunk_delay=0.05)
    cfg = make_config([b.address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    stop: asyncio.Task[None] | None = None
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    try:
        # A long stream in flight keeps the drain open (as any busy gateway at SIGTERM).
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", gw.port)
        stream = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 50, "stream": True})
        busy_w.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(stream), stream)
        )
        await busy_r.readuntil(b"\r\n\r\n")  # its head: in flight
        # The client under test: accepted, its head and half its body read by the gateway.
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(head + body[: len(body) // 2])
        await w.drain()
        await asyncio.sleep(0.3)
        stop = asyncio.create_task(gw.stop(drain_timeout=5))
        await asyncio.sleep(0.2)  # the drain has started (listener closed, idle connections closed)
        w.write(body[len(body) // 2 :])
        try:
            await w.drain()
            answer = await asyncio.wait_for(r.read(), 30)
        except ConnectionResetError:
            answer = b"<connection reset>"
        # Fails on main: b"" (closed, nothing answered) or a reset.
        assert answer.startswith(b"HTTP/1.1 "), answer
        busy_w.close()
    finally:
        if stop is None:
            await gw.stop(drain_timeout=0.1)
        else:
            await asyncio.wait_for(stop, 30)


async def test_a_half_read_request_alone_is_answered_before_the_stop_closes(backends):
    """Nothing in flight: the stop does not close everything at once, it waits (within the deadline) for
    the request it found arriving, which gets the drain's 503 and ``Connection: close``."""
    (b,) = await backends(1)
    cfg = make_config([b.address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    head = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", gw.port)  # kept alive, nothing sent
    stop: asyncio.Task[None] | None = None
    try:
        w.write(head + body[:5])
        await w.drain()
        await asyncio.sleep(0.2)
        stop = asyncio.create_task(gw.stop(drain_timeout=5))
        assert await asyncio.wait_for(idle_r.read(), 30) == b""  # the idle one: closed at once
        await asyncio.sleep(0.2)
        assert not stop.done()  # waiting for the request it found arriving
        w.write(body[5:])
        await w.drain()
        answer = await asyncio.wait_for(r.read(), 30)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"\r\nConnection: close\r\n" in answer
        await asyncio.wait_for(stop, 30)
    finally:
        w.close()
        idle_w.close()
        if stop is None:
            await gw.stop(drain_timeout=0.1)
        elif not stop.done():
            await asyncio.wait_for(stop, 30)


async def test_a_request_unread_in_the_kernel_when_the_drain_starts_is_answered():
    """A whole request that has arrived but not yet been read (the loop had not got to it: here its
    reading is paused) is not closed with it unread (a reset), it is read and answered."""

    async def handler(req: Request) -> Response:
        return Response(status=200, body=b"ok:" + req.body, content_type="text/plain")

    front = FrontServer({"/x": handler}, handler, max_body=1 << 20)
    conns: list[FrontProtocol] = []

    def protocol() -> FrontProtocol:
        conns.append(p := front.protocol())
        return p

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not conns or conns[0].transport is None:  # noqa: ASYNC110 (accepted: connection_made)
            await asyncio.sleep(0.01)
        (conn,) = conns
        assert conn.transport is not None
        conn.transport.pause_reading()
        w.write(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
        await w.drain()
        await asyncio.sleep(0.2)
        assert not conn.buf and conn._pending is None and conn.task is None  # nothing read yet
        server.close()
        front.drain()  # (before the fix: closed here, its request unread: a reset)
        conn.transport.resume_reading()
        answer = await asyncio.wait_for(r.read(), 30)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok:hi"), answer
        assert b"\r\nConnection: close\r\n" in answer
        await asyncio.wait_for(front.reads_done(), 30)
        assert not front.reading
    finally:
        w.close()
        front.close_all()


async def test_every_worker_answers_the_requests_it_found_arriving(backends, tmp_path):
    """``--workers 2`` (each worker's own drain): requests half sent on several connections (spread over
    the workers by SO_REUSEPORT) when SIGTERM comes, nothing else in flight, are each answered 503 once
    their rest arrives; the workers exit cleanly."""
    import os
    import signal

    from gateway import drain_kit
    from gateway.backend import free_port

    (b,) = await backends(1)
    port, admin, stderr = free_port(), free_port(), tmp_path / "stderr"
    cfg = drain_kit.config(tmp_path, b.address, drain_s=10)
    proc = await drain_kit.serve(
        "--config", str(cfg), "--port", str(port), "--admin-port", str(admin), "--workers", "2",
        "--min-ready-workers", "2", stderr=stderr,
    )  # fmt: skip
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    head = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        for _ in range(6):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(head + body[:5])
            await w.drain()
            conns.append((r, w))
        # Each connection accepted by a worker, its half request read or waiting in the kernel: the drain
        # answers it (a fixed 2 s before: a loaded worker could still have one in its accept queue, reset
        # when the listener closed).
        await drain_kit.accepted(port, [w for _, w in conns])
        os.kill(proc.pid, signal.SIGTERM)
        # Every worker closed its listener: each drains (a fixed 0.5 s before: the rest of a request that
        # arrived before a loaded worker handled the signal was answered 200).
        await drain_kit._refused(port, within_s=30)
        for _, w in conns:
            w.write(body[5:])
            await w.drain()
        answers = [await asyncio.wait_for(r.read(), 30) for r, _ in conns]
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers), answers
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        for _, w in conns:
            w.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert drain_kit.unclean(stderr) == []
