"""Review s18-qa2 M2 in ``kvgate serve --clusters``: it relays every answer as a stream, so an HTTP/1.0
client asking for ``Connection: keep-alive`` got ``Connection: close`` in the head and a connection left
open after the body (FAILED before: still open 5 s later). The front closes it now
(``tests/gateway/test_http10_keepalive_stream.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson


async def test_an_http10_keep_alive_client_of_clusters_sees_its_answer_end(
    pods: Callable[..., Any], gateway: Callable[..., Any]
) -> None:
    pod = await pods()
    gw = await gateway([pod.address])
    raw = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 1})
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    out, closed = b"", False
    try:
        w.write(
            b"POST /v1/completions HTTP/1.0\r\ncontent-type: application/json\r\nconnection: keep-alive\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(raw), raw)
        )
        async with asyncio.timeout(5):
            while chunk := await r.read(65536):
                out += chunk
            closed = True
    except TimeoutError:
        pass
    finally:
        w.close()
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), out[:200]
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["choices"], body
    assert closed, "the whole answer came, the connection stayed open"


async def test_clusters_says_keep_alive_on_an_http10_keep_alive_whole_answer(
    pods: Callable[..., Any], gateway: Callable[..., Any]
) -> None:
    """Review s19-qa L5: the answers ``--clusters`` gives whole (``GET /v1/models``, a 404) keep an HTTP/1.0
    keep-alive client's connection and now say ``Connection: keep-alive`` (FAILED before: no
    ``Connection`` header, the connection kept anyway)."""
    pod = await pods()
    gw = await gateway([pod.address])
    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
    got = []
    try:
        for path in (b"/v1/models", b"/nope"):
            w.write(b"GET %b HTTP/1.0\r\nconnection: keep-alive\r\n\r\n" % path)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            headers = dict(
                (n.strip().lower(), v.strip().lower())
                for n, _, v in (ln.partition(b":") for ln in head[:-4].split(b"\r\n")[1:])
            )
            await asyncio.wait_for(r.readexactly(int(headers[b"content-length"])), 30)
            got.append((head.split(b" ")[1], headers.get(b"connection")))
    finally:
        w.close()
    assert got == [(b"200", b"keep-alive"), (b"404", b"keep-alive")], got
