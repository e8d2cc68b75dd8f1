"""Issue #12 regressions for the client side of the gateway: stalled readers, slowloris, connection
caps, and the HTTP framing rules. Each test fails on the gateway before the fix (real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, running_gateway
from gateway.test_front import BODY, _exchange, _req
from kvgate.httpfront.server import connection_cap

BODY_HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY)


async def _wait_for(cond, within: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


async def _small_window_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client socket with a tiny receive buffer: it fills at once when the client does not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def test_a_client_that_stops_reading_a_stream_releases_its_slot_and_the_upstream(backends):
    # 400 tokens x 32 KB = ~13 MB of stream: far more than socket buffers hold.
    (b,) = await backends(1, tokens=400, piece_bytes=32 * 1024)
    limits = {"maxConcurrentRequests": 1, "sendTimeoutSeconds": 0.5, "writeBufferBytes": 64 * 1024}
    async with running_gateway(make_config([b.address], extra={"limits": limits})) as gw:
        assert gw.proxy is not None
        body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 400})
        _reader, writer = await _small_window_connection(gw.port)
        writer.write(_req(body))
        await writer.drain()
        assert await _wait_for(lambda: gw.proxy.inflight == 1, 5)
        # Never read: the send deadline must give the slot back (before: held until the stream ended,
        # i.e. forever for a long generation; every other request got 429).
        assert await _wait_for(lambda: gw.proxy.inflight == 0, 10), "slot still held by a stalled reader"
        ep = gw.pools[0].endpoints()[0]
        assert ep.inflight.requests == 0  # the picker's in-flight accounting was released too
        assert await _wait_for(lambda: b.disconnects == 1, 5)  # the upstream stream was aborted
        async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200
        writer.close()


async def test_a_client_that_closes_its_socket_releases_the_request_at_once(backends):
    (b,) = await backends(1)
    b.mode = "hang"
    async with running_gateway(make_config([b.address])) as gw:
        assert gw.proxy is not None
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(_req())
        await writer.drain()
        await asyncio.wait_for(b.arrived.wait(), 30)
        assert gw.proxy.inflight == 1
        writer.close()
        assert await _wait_for(lambda: gw.proxy.inflight == 0, 3)
        assert gw.pools[0].endpoints()[0].inflight.requests == 0


async def test_pipelined_requests_not_read_wait_for_the_client_within_the_send_deadline(backends):
    # A pipelining client that never reads its (large) answers: the gateway answers one, waits, then
    # gives up on the connection instead of buffering every answer.
    (b,) = await backends(1, tokens=200, piece_bytes=1000)  # ~200 KB answers
    limits = {"sendTimeoutSeconds": 0.5, "writeBufferBytes": 16 * 1024}
    async with running_gateway(make_config([b.address], extra={"limits": limits})) as gw:
        big = orjson.dumps({"model": "m", "prompt": "x" * 10, "max_tokens": 200})
        _reader, writer = await _small_window_connection(gw.port)
        for _ in range(200):
            writer.write(_req(big))
        await writer.drain()
        front = gw._servers[0][1]
        assert await _wait_for(lambda: front.timed_out["send"] >= 1, 10)
        assert await _wait_for(lambda: not front.connections, 5)
        assert len(b.received) < 200  # it stopped working for the client that does not read
        writer.close()


async def test_slowloris_headers_and_bodies_get_408_by_a_whole_request_deadline(backends):
    (b,) = await backends(1)
    limits = {"headerTimeoutSeconds": 0.6, "bodyTimeoutSeconds": 0.6, "keepAliveSeconds": 30}
    async with running_gateway(make_config([b.address], extra={"limits": limits})) as gw:
        loop = asyncio.get_running_loop()

        async def trickle(raw: bytes) -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            t0 = loop.time()

            async def send() -> None:
                for i in range(len(raw)):  # one byte every 50 ms: each would restart an idle timer
                    writer.write(raw[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0.05)

            sender = asyncio.create_task(send())
            try:
                out = await asyncio.wait_for(reader.read(4096), 5)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                writer.transport.abort()
            return out, loop.time() - t0

        head_out, t_head = await trickle(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200)
        assert head_out.startswith(b"HTTP/1.1 408"), head_out[:80]
        assert t_head < 5
        body_out, t_body = await trickle(_req(b"{" + b" " * 300 + b"}"))
        assert body_out.startswith(b"HTTP/1.1 408"), body_out[:80]
        assert t_body < 5
        async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200


async def test_max_connections_refuses_clearly_and_recovers(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address], extra={"limits": {"maxConnections": 3}})) as gw:
        front = gw._servers[0][1]  # the data port's front
        held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(3)]
        try:
            # Waits for the state, not a fixed pause (tst32): the cap counts connections the front took.
            assert await _wait_for(lambda: len(front.connections) == 3, 30), "the held connections accepted"
            out = await _exchange(gw.port, _req(), wait_s=30)  # (the refusal, then the close)
            assert out.startswith(b"HTTP/1.1 503") and b"too_many_connections" in out
            held[0][1].close()
            assert await _wait_for(lambda: len(front.connections) == 2, 30), "the closed one released"
            out = await _exchange(gw.port, _req(extra="Connection: close\r\n"), wait_s=30)
            assert out.startswith(b"HTTP/1.1 200")
        finally:
            for _, w in held:
                w.close()


def test_max_connections_is_clamped_to_the_fd_limit():
    assert connection_cap(10_000, (1024, 1024)) == (1024 - 64) // 2
    assert connection_cap(100, (1_000_000, 1_000_000)) == 100


async def test_http_framing_rules(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        cases = {
            # Content-Length must be ASCII digits (isdigit() alone takes "\u0661", Arabic-Indic one).
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \xd9\xa1\r\n\r\n{": b"400",
            _req(extra="X(Bad): 1\r\n"): b"400",  # header name not an RFC 9110 token
            _req(extra="X\x01Bad: 1\r\n"): b"400",
            b"GET /healthz HTTP/1.1\r\n\r\n": b"400",  # HTTP/1.1 without Host
            # RFC 9112 §3.2: more than one Host line (either version) is a 400 (review s21-qa F3).
            _req(extra="Host: y\r\n"): b"400",
            b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n": b"400",
        }
        for raw, status in cases.items():
            out = await _exchange(gw.port, raw)
            assert out.startswith(b"HTTP/1.1 " + status), (raw[:60], out[:80])
        out = await _exchange(gw.port, b"GET /healthz HTTP/1.0\r\n\r\n")  # 1.0 may omit Host
        assert out.startswith(b"HTTP/1.1 200")
        # Headers named in Connection are hop-by-hop: never forwarded.
        out = await _exchange(gw.port, _req(extra="Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\n"), 1)
        assert out.startswith(b"HTTP/1.1 200")
        assert "x-hop" not in b.received[-1][1]


async def test_control_bytes_in_header_values_get_the_gateways_400(backends):
    # Review s17-qa L3 (RFC 9110 §5.5): a value with a control byte other than CR/LF/NUL was forwarded
    # upstream (vLLM answered its own text/plain 400, passed through) and echoed raw in x-request-id.
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        for bad in ("a\x01b", "a\x7fc", "a\x1bb", "\x0bx", "caf\u00e9\x01"):
            out = await _exchange(gw.port, _req(extra=f"x-request-id: {bad}\r\n"))
            head, _, body = out.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), (bad, out[:80])
            assert b"application/json" in head and bad.encode("latin-1") not in head
            assert "control character" in orjson.loads(body)["error"]["message"]
        assert not b.received  # nothing went upstream
        # A tab and non-ASCII (obs-text) stay allowed.
        out = await _exchange(gw.port, _req(extra="x-note: a\tb\r\nx-name: caf\u00e9\r\n"), 1)
        assert out.startswith(b"HTTP/1.1 200"), out[:80]
        assert b.received[-1][1]["x-note"] == "a\tb"


async def test_a_bare_lf_head_gets_400_at_once(backends):
    # Review s17-qa L4: a head whose lines end in a bare LF never had its CRLF CRLF, so it waited the
    # header deadline (10 s) for a 408; malformed HTTP gets 400 at once (docs/gateway.md "Errors").
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        heads = (
            BODY_HEAD.replace(b"\r\n", b"\n") + BODY,  # every line
            b"POST /v1/completions HTTP/1.1\n",  # the request line alone, the rest still to come
            b"POST /v1/completions HTTP/1.1\r\nHost: x\nContent-Length: 2\n\n{}",  # the header lines
            b"POST /v1/completions HTTP/1.1\r\nHost: x\n\r\n",  # one header line
        )
        for raw in heads:
            out = await _exchange(gw.port, raw, wait_s=2)  # (the header deadline is 10 s)
            assert out.startswith(b"HTTP/1.1 400"), (raw[:40], out[:80])
            assert b"bare LF" in out
        assert not b.received


async def test_100_continue_is_never_written_into_an_earlier_pipelined_response(backends):
    (b,) = await backends(1, tokens=3, chunk_delay=0.2)
    async with running_gateway(make_config([b.address])) as gw:
        slow = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 3})
        raw = _req(slow) + _req(extra="Expect: 100-continue\r\nConnection: close\r\n")
        out = await _exchange(gw.port, raw, wait_s=5)
        assert out.startswith(b"HTTP/1.1 200"), out[:60]
        assert b"100 Continue" not in out.split(b"0\r\n\r\n", 1)[0]  # not inside the first response


async def test_413_lingers_so_the_client_reads_it(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address], extra={"limits": {"maxBodyBytes": 1000}})) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        body = b"x" * (2 << 20)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.drain(), 5)
        out = await asyncio.wait_for(reader.read(4096), 5)
        assert out.startswith(b"HTTP/1.1 413"), out[:60]
        writer.close()


def test_limit_keys_parse_and_ignored_keys_are_refused():
    import pytest

    from kvgate.config.gateway import GatewayConfigError

    cfg = make_config(
        ["127.0.0.1:1"],
        extra={
            "limits": {
                "headerTimeoutSeconds": 3,
                "bodyTimeoutSeconds": 4,
                "sendTimeoutSeconds": 5,
                "writeBufferBytes": 1024,
                "maxConnections": 7,
            }
        },
    )
    lim = cfg.limits
    assert (lim.header_timeout_s, lim.body_timeout_s, lim.send_timeout_s) == (3, 4, 5)
    assert (lim.write_buffer_bytes, lim.max_connections) == (1024, 7)
    with pytest.raises(GatewayConfigError) as err:
        make_config(["127.0.0.1:1"], extra={"limits": {"maxConnectionsPerEndpoint": 4}})
    assert err.value.key == "limits.maxConnectionsPerEndpoint"
