"""rev-e32 on 15c2a7c7 (qa32a Q4): ``kvgate serve`` relays a model server's answer headers "as Envoy relays
them", but (F1) a repeated header reaches the client as its last line only: two ``Set-Cookie`` lines (a
session-affinity cookie and another) lose one, where Envoy and the server itself send both (``Set-Cookie``
cannot be comma-joined, RFC 6265 3); and (F2) a header value with non-ASCII bytes (obs-text, RFC 9110 5.5) is
read as latin-1 and written as UTF-8: every byte over 0x7f doubled
(``caf\\xc3\\xa9`` -> ``caf\\xc3\\x83\\xc2\\xa9``), where Envoy relays the bytes as they are.
Both fail on main 06fe0a45 and 7c884852; fixreve32 joins a repeated header's lines (each Set-Cookie line kept
apart) and writes a value's bytes as sent."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.conftest import make_config, running_gateway
from rawupstream import header_values, lines_upstream

BODY = orjson.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": []})


async def _answer_head(port: int) -> bytes:
    """The gateway's answer head, as bytes, to one chat request (a raw client: no header decoding)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("extra", "wanted"),
    [
        (b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/\r\n", [b"a=1; Path=/", b"b=2; Path=/"]),
        (b"X-Model-Note: caf\xc3\xa9\r\n", [b"caf\xc3\xa9"]),
        (b"Vary: accept\r\nVary: origin\r\n", [b"accept, origin"]),
        (b"X-Raw: \xff\xfe ok\r\n", [b"\xff\xfe ok"]),
        (b"Set-Cookie: s=\xc3\xa9\r\nSet-Cookie: t=2\r\n", [b"s=\xc3\xa9", b"t=2"]),
    ],
    ids=["F1-two-set-cookie", "F2-non-ascii-bytes", "F1-list-joined", "F2-not-utf8", "F1-F2-cookie-bytes"],
)
async def test_the_servers_header_lines_reach_the_client_as_sent(extra: bytes, wanted: list[bytes]) -> None:
    async with lines_upstream(extra, BODY) as up, running_gateway(make_config([up])) as gw:
        head = await _answer_head(gw.port)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert header_values(head, extra.split(b":", 1)[0].lower()) == wanted, head
