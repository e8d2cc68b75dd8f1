"""A request that arrives while ``kvgate serve`` drains (its head or body still arriving when the drain
began) gets the drain's early 503 "gateway is shutting down" with ``Retry-After`` (the value of the drain
deadline's 503 to a queued request, ``DrainEvictedError``) and ``Connection: close``: it never ran
anywhere, so a client is told when to come back (at another replica). Both doors' answers (a completion,
a ``/v1/responses/{id}`` lookup), one process and ``--workers 2``. Before (session-20 closing note, "Noticed
and left undone"), that 503 had no ``Retry-After``: each test fails on main 7789ac4."""

from __future__ import annotations

import asyncio

import orjson

from gateway.conftest import make_config, make_pools, until
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.types import DrainEvictedError

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
POST = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(BODY)


def _early_503(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    lines = {
        k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
    }
    assert lines.get(b"retry-after") == DrainEvictedError.retry_after.encode(), head  # (fails before)
    assert lines.get(b"connection", b"").lower() == b"close", head
    assert orjson.loads(body)["error"]["message"] == "gateway is shutting down", body


async def test_the_drains_early_503_says_when_to_retry(backends) -> None:
    (b,) = await backends(1)
    cfg = make_config([b.address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    stop: asyncio.Task[None] | None = None
    conns = []
    try:
        # A completion and a Responses lookup, each with part of its request sent before the drain.
        lookup = (b"GET /v1/responses/resp_1 HTT", b"P/1.1\r\nHost: gw\r\n\r\n")
        for first, rest in ((POST + BODY[:5], BODY[5:]), lookup):
            r, w = await asyncio.open_connection("127.0.0.1", gw.port)
            w.write(first)
            await w.drain()
            conns.append((r, w, rest))
        assert gw._data is not None
        front = gw._data[1]
        half = lambda: sum(1 for c in front.connections if c.buf or c._pending is not None)  # noqa: E731
        await until(lambda: half() >= 2, what="both requests half read")
        stop = asyncio.create_task(gw.stop(drain_timeout=5))
        await until(lambda: gw.proxy is not None and gw.proxy.draining, what="the drain started")
        for _, w, rest in conns:
            w.write(rest)
            await w.drain()
        for r, _, _ in conns:
            _early_503(await asyncio.wait_for(r.read(), 30))
        await asyncio.wait_for(stop, 30)
    finally:
        for _, w, _ in conns:
            w.close()
        if stop is None:
            await gw.stop(drain_timeout=0.1)
        elif not stop.done():
            await asyncio.wait_for(stop, 30)


async def test_every_workers_early_503_says_when_to_retry(backends, tmp_path) -> None:
    """``--workers 2``: requests half sent on several connections (spread over the workers) when SIGTERM
    comes are each answered the early 503 with ``Retry-After``."""
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
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        for _ in range(4):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(POST + BODY[:5])
            await w.drain()
            conns.append((r, w))
        # Each connection accepted by a worker, its half request read or waiting in the kernel: the drain
        # answers it (a fixed 2 s before: a loaded worker could still have one in its accept queue, reset
        # when the listener closed).
        await drain_kit.accepted(port, [w for _, w in conns])
        os.kill(proc.pid, signal.SIGTERM)
        await drain_kit._refused(port, within_s=30)  # (every worker closed its listener: each drains)
        for _, w in conns:
            w.write(BODY[5:])
            await w.drain()
        for r, _ in conns:
            _early_503(await asyncio.wait_for(r.read(), 30))
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        for _, w in conns:
            w.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert drain_kit.unclean(stderr) == []
