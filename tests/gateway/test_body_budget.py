"""Review s17-qa H2: request bodies a client can make ``kvgate serve`` hold.

Before: with ``auth`` on, the API key was checked only once the front had read the whole body, so a
client without a key could pin ``maxBodyBytes`` (8 MiB) per connection for ``bodyTimeoutSeconds``
(qa17, live: 40 keyless connections, RSS 47 -> 352 MB); and nothing bounded the bytes all pending bodies
held together (60 connections without auth: 49 -> 508 MB). Now a keyless head gets its 401 at once, its
body read and dropped (the 413's linger), and every body takes its bytes from ``limits.maxBufferedBytes``
(per process) as they arrive: a head announcing more than is free gets 503 with Retry-After before its
body is read, a body that stops fitting gets it while it arrives. Nothing is reserved from the head
alone (s17-qafix-bc B1: header-only connections reserved the whole budget). Real sockets."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.test_front import BODY
from kvgate.gateway.cli import _parser, build_config
from kvgate.httpfront.server import FrontServer


def _front(gw) -> FrontServer:
    return gw._servers[0][1]  # the data port's front


def _head(length: int, extra: bytes = b"") -> bytes:
    return b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n%bcontent-length: %d\r\n\r\n" % (extra, length)


def _keyed(backend, monkeypatch, limits: dict | None = None):
    monkeypatch.setenv("KVG_TEST_KEYS", "sk-a=tenant-a")
    extra: dict = {"auth": {"apiKeysEnv": "KVG_TEST_KEYS"}}
    if limits:
        extra["limits"] = limits
    return make_config([backend.address], extra=extra)


async def test_a_keyless_request_is_refused_from_its_head(backends, monkeypatch):
    (b,) = await backends(1)
    async with running_gateway(_keyed(b, monkeypatch)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(_head(8_000_000) + b"{")  # the body's first byte; 7,999,999 never come
        await writer.drain()
        try:
            out = await asyncio.wait_for(reader.read(4096), 3)
        except TimeoutError:
            out = b"(no answer in 3 s: the gateway waits for the body of a request it will refuse)"
        writer.close()
        assert out.startswith(b"HTTP/1.1 401"), out[:80]
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"Connection: close" in head and b"WWW-Authenticate: Bearer" in head
        assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
        # The same on any path (an unknown path's 404 came after its body too), and for any body.
        for head in (
            b"POST /v1/nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 8000000\r\n\r\n{",
            b"GET /v1/models HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(head)
            out = await asyncio.wait_for(reader.read(4096), 3)
            writer.close()
            assert out.startswith(b"HTTP/1.1 401"), (head[:30], out[:80])
        # A keyed request still passes (the proxy takes the tenant), and a keyless GET /v1/models too.
        async with aiohttp.ClientSession() as s:
            async with s.post(
                base_url(gw) + "/v1/completions", data=BODY, headers={"Authorization": "Bearer sk-a"}
            ) as r:
                assert r.status == 200
            async with s.get(base_url(gw) + "/v1/models") as r:
                assert r.status == 200


async def test_keyless_pending_bodies_are_not_buffered(backends, monkeypatch):
    (b,) = await backends(1)
    async with running_gateway(_keyed(b, monkeypatch)) as gw:
        front = _front(gw)
        size = 4_000_000
        writers = []
        held = 0
        try:
            for _ in range(8):
                _reader, w = await asyncio.open_connection("127.0.0.1", gw.port)
                w.write(_head(size) + b"a" * (size - 1))  # all of the body but its last byte
                with contextlib.suppress(ConnectionError):
                    await asyncio.wait_for(w.drain(), 5)
                writers.append(w)
            await asyncio.sleep(0.2)
            held = sum(len(c.buf) for c in front.connections)
        finally:
            for w in writers:
                w.close()
        # Before: 8 x 4 MB (32 MB) held in the connections' buffers until the body deadline.
        assert held < 1 << 20, f"8 keyless connections with pending 4 MB bodies hold {held} bytes"
        assert front.budget.used == 0  # (refused at the head: nothing reserved)


async def test_bodies_over_the_budget_get_503_before_they_are_read(backends):
    (b,) = await backends(1)
    limits = {"maxBufferedBytes": 1_500_000, "maxBodyBytes": 1_500_000}  # (a budget >= the cap: L1)
    cfg = make_config([b.address], extra={"limits": limits})
    async with running_gateway(cfg) as gw:
        front = _front(gw)
        big = orjson.dumps({"model": "m", "prompt": "x" * 900_000, "max_tokens": 1})
        # A holds 0.9 MB of the 1.5 MB budget: all of its body but the last 1,000 bytes arrived.
        # (Before s17-qafix-bc B1 the head alone reserved the announced 0.9 MB.)
        ra, wa = await asyncio.open_connection("127.0.0.1", gw.port)
        wa.write(_head(len(big)) + big[:-1000])
        await wa.drain()
        await until(lambda: front.budget.used == len(big) - 1000, 5, "A's arrived bytes taken")
        # B's 0.9 MB do not fit: 503 with Retry-After, from its head.
        rb, wb = await asyncio.open_connection("127.0.0.1", gw.port)
        wb.write(_head(len(big)) + b"{")
        await wb.drain()
        out = await asyncio.wait_for(rb.read(4096), 3)
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), out[:80]
        assert b"Retry-After: 1" in head and b"Connection: close" in head
        err = orjson.loads(body)["error"]
        assert err["code"] == "service_unavailable" and "maxBufferedBytes" in err["message"]
        wb.close()
        # A chunked body takes its bytes chunk by chunk: one over what is left gets the same 503.
        rc, wc = await asyncio.open_connection("127.0.0.1", gw.port)
        chunk = b"x" * 700_000
        wc.write(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n%b\r\n" % (len(chunk), chunk)
        )
        with contextlib.suppress(ConnectionError):
            await wc.drain()
        out = await asyncio.wait_for(rc.read(4096), 3)
        assert out.startswith(b"HTTP/1.1 503"), out[:80]
        wc.close()
        # A completes and is answered; its bytes go back, and the next big body fits.
        wa.write(big[-1000:])
        await wa.drain()
        out = await asyncio.wait_for(ra.readuntil(b"\r\n\r\n"), 5)
        assert out.startswith(b"HTTP/1.1 200"), out[:80]
        wa.close()
        await until(lambda: front.budget.used == 0, 5, "A's bytes given back")
        async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=big) as r:
            assert r.status == 200
        assert front.budget.used == 0
        # A reload's limits apply to the budget live.
        limits["maxBufferedBytes"] = 5_000_000
        new = make_config([b.address], extra={"limits": limits}).limits
        gw.apply_limits(new)
        assert front.budget.limit == 5_000_000


async def test_a_closed_connection_gives_its_pending_body_back(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        front = _front(gw)
        _, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(_head(1_000_000) + b"{" * 500_000)
        await w.drain()
        # (what arrived, not the announced 1 MB: s17-qafix-bc B1)
        await until(lambda: front.budget.used == 500_000, 5, "the arrived half taken")
        w.close()
        await until(lambda: front.budget.used == 0, 5, "given back when the client left")


def test_max_buffered_bytes_flag_overrides_the_config(tmp_path):
    args = _parser().parse_args(
        ["--endpoints", "127.0.0.1:1", "--model", "m", "--max-buffered-bytes", "9000000"]
    )
    assert build_config(args).limits.max_buffered_bytes == 9000000
    assert (
        build_config(
            _parser().parse_args(["--endpoints", "127.0.0.1:1", "--model", "m"])
        ).limits.max_buffered_bytes
        == 1 << 30
    )
    # ... and a reload of the file keeps the flag's value.
    from kvgate.gateway.cli import reload_loader

    path = tmp_path / "gw.yaml"
    path.write_text(
        "pools:\n  - {name: p, policy: round-robin, endpoints: ['127.0.0.1:1'], models: [m]}\n"
        "limits: {maxBufferedBytes: 99, maxBodyBytes: 99}\n"
    )
    flagged = _parser().parse_args(["--config", str(path), "--max-buffered-bytes", "9000000"])
    assert build_config(flagged).limits.max_buffered_bytes == 9000000
    assert reload_loader(flagged)(str(path)).limits.max_buffered_bytes == 9000000
    plain = _parser().parse_args(["--config", str(path)])
    assert reload_loader(plain)(str(path)).limits.max_buffered_bytes == 99
