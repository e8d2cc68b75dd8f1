"""qa30 Q4 (L): docs/gateway.md "Retries": the stream's response head is held until the upstream's first
body byte, "so a stream that ends or fails before its first byte is still retried on another endpoint,
and the client never sees a 200 that turns into an error event before any token". A server (or a proxy
in front of it) that sends an SSE comment (``: ping``, a keep-alive) before its first token and then dies
gives the client exactly that: a 200, the ping, an ``upstream_error`` event, no token, no retry, though
another endpoint was idle. The held head waits for any byte, not for the first event with output
(``openai.sse.has_output``, the rule the EPP's first token uses).

Fails on main 6d96a979: the request that reached the pinging server first ends with the error event."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway

STREAM = b'{"model":"m","prompt":"hello there","max_tokens":3,"stream":true}'


class PingThenDie:
    """Reads a request, answers an event-stream head and ``: ping``, then closes (a crash before the
    first token)."""

    def __init__(self) -> None:
        self.hits = 0

    async def start(self) -> PingThenDie:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            await r.readexactly(n)
            self.hits += 1
            ping = b": ping\n\n"
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            w.write(b"%x\r\n%s\r\n" % (len(ping), ping))
            await w.drain()
            await asyncio.sleep(0.1)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def stop(self) -> None:
        self.server.close()


async def test_a_stream_that_dies_after_a_ping_before_any_token_is_retried_elsewhere():
    bad = await PingThenDie().start()
    good = await Backend("good").start()
    cfg = make_config([bad.address, good.address])  # round-robin
    try:
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            answers = []
            for _ in range(10):  # until one request reached the pinging server first
                async with s.post(base_url(gw) + "/v1/completions", data=STREAM) as r:
                    answers.append((r.status, await r.read()))
                if bad.hits:
                    break
            assert bad.hits
            for status, raw in answers:
                assert status == 200
                assert b'"code":"upstream_error"' not in raw, raw
                assert raw.endswith(b"data: [DONE]\n\n"), raw
    finally:
        await bad.stop()
        await good.stop()
