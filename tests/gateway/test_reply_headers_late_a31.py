"""late-a31: ``kvgate serve``'s answer heads.

1. A model server's ``Content-Encoding`` (and ``Content-Language``, ``Vary``) reached the client nowhere:
   a gzip body went out as gzip bytes labelled ``application/json`` with no ``Content-Encoding``, which no
   client can read (review s31-rev-a31 F1's note). Now relayed as they came (the body is not decoded), for
   streamed and non-streamed answers, unless the server names them in ``Connection`` (hop-by-hop).
2. The front's connection-cap 503 ``too_many_connections`` had no ``Retry-After``, unlike every other 503.

Each test but the hop-by-hop one (the control) fails on 674e1c56.
"""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway, until
from rawupstream import raw_upstream

BODY = b'{"model":"m","prompt":"x","max_tokens":2}'
ANSWER = {
    "id": "cmpl-gz",
    "object": "text_completion",
    "model": "m",
    "choices": [{"index": 0, "text": "a gzip answer \u00e9", "finish_reason": "length"}],
}
GZ = gzip.compress(orjson.dumps(ANSWER))
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
FRAMINGS = {
    "content-length": HEAD + b"content-length: %d\r\n\r\n" % len(GZ),
    "close": HEAD + b"connection: close\r\n\r\n",
}


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
async def test_a_gzip_answer_reaches_the_client_readable(framing):
    async with (
        raw_upstream(FRAMINGS[framing] + GZ) as up,
        running_gateway(make_config([up.address])) as gw,
        aiohttp.ClientSession() as s,  # (decompresses what its Content-Encoding names)
        s.post(base_url(gw) + "/v1/completions", data=BODY) as r,
    ):
        assert r.status == 200
        assert r.headers.get("Content-Encoding") == "gzip"  # (before: none, the gzip bytes as JSON)
        assert await r.json() == ANSWER


async def test_content_language_and_vary_are_relayed():
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-language: fr\r\n"
        b"vary: accept-encoding\r\nconnection: close\r\n\r\n"
    )
    async with (
        raw_upstream(head + orjson.dumps(ANSWER)) as up,
        running_gateway(make_config([up.address])) as gw,
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=BODY) as r,
    ):
        assert r.status == 200
        assert await r.json() == ANSWER
        assert r.headers.get("Content-Language") == "fr"
        assert r.headers.get("Vary") == "accept-encoding"


async def test_a_header_the_server_names_in_connection_is_not_relayed():
    """The control: a hop-by-hop header (RFC 9110 7.6.1) stays between the gateway and the server."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-language: fr\r\n"
        b"connection: close, content-language\r\n\r\n"
    )
    async with (
        raw_upstream(head + orjson.dumps(ANSWER)) as up,
        running_gateway(make_config([up.address])) as gw,
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=BODY) as r,
    ):
        assert r.status == 200
        assert await r.json() == ANSWER
        assert "Content-Language" not in r.headers


async def test_a_streamed_answer_keeps_its_representation_headers():
    event = orjson.dumps({**ANSWER, "choices": [{"index": 0, "text": "a", "finish_reason": None}]})
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-language: fr\r\n"
        b"vary: accept-language\r\nconnection: close\r\n\r\n" + b"data: " + event + b"\n\ndata: [DONE]\n\n"
    )
    body = b'{"model":"m","prompt":"x","max_tokens":2,"stream":true}'
    async with (
        raw_upstream(answer) as up,
        running_gateway(make_config([up.address])) as gw,
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=body) as r,
    ):
        text = await r.read()
        assert r.status == 200, text
        assert b"data: [DONE]" in text
        assert r.headers.get("Content-Language") == "fr"
        assert r.headers.get("Vary") == "accept-language"


async def test_the_connection_caps_503_says_when_to_retry(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address], extra={"limits": {"maxConnections": 2}})) as gw:
        front = gw._servers[0][1]  # the data port's front
        held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
        try:
            await until(lambda: len(front.connections) == 2, 30, "the two held connections accepted")
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                async with asyncio.timeout(30):
                    out = await reader.read()  # (the refusal, then the close)
            finally:
                writer.close()
        finally:
            for _, w in held:
                w.close()
        assert out.startswith(b"HTTP/1.1 503") and b"too_many_connections" in out, out
        head = out.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nretry-after: 1\r\n" in head + b"\r\n", head
