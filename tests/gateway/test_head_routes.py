"""``HEAD`` on every route that takes ``GET`` answers the GET's status and headers, ``Content-Length`` the
length of the GET's body, and no body (RFC 9110 §9.3.2): the admin routes, ``/v1/models[/{id}]`` and the
Responses lookup ``/v1/responses/{id}`` (a 405 before gw22: it took GET only; the only GET route that
did not take HEAD). Raw sockets on loopback: each HEAD is followed on the same connection by a GET, so a
stray body byte would show as garbage before the GET's answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore, make_responses


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    async with serving(ResponsesStore("s0")) as started:
        yield started


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, rest


async def _head_then_get(port: int, path: str) -> tuple[bytes, bytes]:
    """``HEAD path`` then ``GET path`` (closing) on one connection: what came back, cut at the second
    status line (the HEAD's answer, then the GET's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        .encode()
    )  # fmt: skip
    out = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    second = out.find(b"HTTP/1.1 ", 1)
    assert second > 0, out[:300]
    return out[:second], out[second:]


def _body(headers: dict[str, str], rest: bytes) -> bytes:
    if headers.get("transfer-encoding") == "chunked":
        body, rest = b"", rest
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return body
            body, rest = body + rest[:size], rest[size + 2 :]
    return rest


@pytest.mark.parametrize(
    "path,same_length",
    [
        ("/healthz", True),
        ("/readyz", True),
        ("/metrics", False),  # (its values move between the two asks: the length may too)
        ("/v1/models", True),
        ("/v1/models/m", True),
        ("/v1/models/nope", True),  # (a 404 the GET's too)
        ("/v1/pool/aggregate", False),
        ("/v1/responses/{rid}", True),
        ("/v1/responses/{rid}?stream=true&starting_after=0", False),
    ],
)
async def test_head_answers_the_gets_status_and_headers_without_a_body(
    stores: list[ResponsesStore], path: str, same_length: bool
) -> None:
    (store,) = stores
    async with running_gateway(make_config([store.address])) as gw, aiohttp.ClientSession() as s:
        (rid,) = await make_responses(s, base_url(gw), 1)
        head_raw, get_raw = await _head_then_get(gw.port, path.format(rid=rid))
    head_status, head_headers, head_rest = _split(head_raw)
    get_status, get_headers, get_rest = _split(get_raw)
    assert head_status == get_status, (head_raw[:200], get_raw[:200])
    assert head_rest == b"", head_raw  # no body: the GET's answer follows the HEAD's head at once
    assert head_headers.get("content-type") == get_headers.get("content-type")
    body = _body(get_headers, get_rest)
    if "content-length" in head_headers:
        if same_length:
            assert int(head_headers["content-length"]) == len(body), (head_headers, len(body))
    else:  # (a relayed answer of unknown length: chunked, as the GET's)
        assert head_headers.get("transfer-encoding") == "chunked" == get_headers.get("transfer-encoding")
    assert body  # (the GET's answer has one: the HEAD's was left out, not empty)
    if "/v1/responses/" in path:
        assert [m for m, _ in store.lookups] == ["GET", "GET"]  # (asked upstream as a GET)


async def test_other_methods_on_the_lookup_name_head_as_allowed(stores: list[ResponsesStore]) -> None:
    (store,) = stores
    async with running_gateway(make_config([store.address])) as gw, aiohttp.ClientSession() as s:
        async with s.put(base_url(gw) + "/v1/responses/resp_x") as r:
            assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
        async with s.head(base_url(gw) + "/v1/responses/resp_x/cancel") as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"


@pytest.mark.parametrize("length", [None, 5], ids=["length-unknown", "length-known"])
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_a_streamed_answer_to_head_is_its_head_alone(length: int | None, version: str) -> None:
    """The front's ``StreamResponse`` (a relayed answer) for a ``HEAD``: its head (``Content-Length``
    when known; else chunked for HTTP/1.1, neither for 1.0), no chunk, no last chunk; the connection
    kept for the next request (FAILED before: the chunks and the last chunk were written)."""
    from kvgate.httpfront.server import FrontServer, Request, Response, StreamResponse

    async def handler(req: Request) -> Response | StreamResponse:
        if req.method == "GET":
            return Response(body=b"next")
        out = StreamResponse(length=length)
        await out.prepare(req)
        await out.write(b"hello")
        await out.write_eof()
        return out

    front = FrontServer({}, handler, max_body=1 << 20)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    keep = "Connection: keep-alive\r\n" if version == "HTTP/1.0" else ""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        last = "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        writer.write(f"HEAD /a {version}\r\nHost: x\r\n{keep}\r\n{last}".encode())
        out = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
    finally:
        front.close_all()
        server.close()
    head, _, rest = out.partition(b"\r\n\r\n")
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nnext"), out
    headers = head.lower()
    if length is not None:
        assert b"content-length: 5\r\n" in headers + b"\r\n", head
    else:
        assert (b"transfer-encoding: chunked" in headers) == (version == "HTTP/1.1"), head
