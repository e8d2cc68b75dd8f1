"""A non-streamed JSON body framed by the close (no Content-Length, not chunked) that a clean close cuts
short (a server dying mid-body: the kernel closes its socket with a FIN) reached the client as a
truncated 200 (closing-s30 "Failover leftovers"). Now such a body, held whole before any byte goes to the
client, is checked: one that does not parse is a lost body, retried elsewhere, or the client's 503
"all attempts failed" with ``Retry-After``; a whole one is relayed as before. Real gateway, a raw
upstream on loopback (port 0) writing the bytes itself.

Both cut-body tests fail on main 691110b3 (a 200 whose body does not parse); the whole-body one is the
control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway

BODY = b'{"model":"m","prompt":"x","max_tokens":2}'
WHOLE = orjson.dumps(
    {"id": "cmpl-raw", "object": "text_completion", "model": "m",
     "choices": [{"index": 0, "text": "raw answer", "finish_reason": "length"}],
     "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
)  # fmt: skip


@asynccontextmanager
async def raw_upstream(body: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on 127.0.0.1:0 that reads one request, answers a 200 JSON head without Content-Length
    and ``body``, then closes cleanly (FIN): the body framed by the close. Yields (address, hits)."""
    hits: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            hits.append(1)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", hits
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cut_close_framed_json_body_is_retried_elsewhere():
    good = await Backend("good").start()
    try:
        async with raw_upstream(WHOLE[: len(WHOLE) // 2]) as (cutter, hits):
            # (round-robin; ejection far beyond the test, so the cutter is tried again after a failure)
            cfg = make_config([cutter, good.address], extra={"health": {"ejectAfterFailures": 1000}})
            async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
                for _ in range(6):
                    async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                        raw = await r.read()
                        assert r.status == 200, raw
                        doc = orjson.loads(raw)  # (before: a truncated 200, JSONDecodeError)
                        assert doc["choices"][0]["text"].startswith("good-"), doc
            assert hits, "the cutting upstream was never tried"
    finally:
        await good.stop()


async def test_a_cut_close_framed_json_body_with_nowhere_else_is_a_503():
    async with raw_upstream(WHOLE[:-1]) as (cutter, hits):
        async with running_gateway(make_config([cutter])) as gw, aiohttp.ClientSession() as s:
            r = await s.post(base_url(gw) + "/v1/completions", data=BODY)
            raw = await r.read()
            assert r.status == 503, raw
            assert r.headers.get("Retry-After") == "1", dict(r.headers)
            assert "TruncatedBody" in orjson.loads(raw)["error"]["message"], raw
        assert hits


async def test_a_whole_close_framed_json_body_is_relayed():
    async with (
        raw_upstream(WHOLE) as (server, _),
        running_gateway(make_config([server])) as gw,
        aiohttp.ClientSession() as s,
    ):
        r = await s.post(base_url(gw) + "/v1/completions", data=BODY)
        assert r.status == 200
        assert orjson.loads(await r.read())["choices"][0]["text"] == "raw answer"
