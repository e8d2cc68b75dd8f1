"""Review s21-gw (fixgw21): a refusal's linger is bounded by time only (M1) and its end does not cut
output a client is still taking (L2); a refusal behind a pipelined answer goes out; a stream tries the
escaped model spellings only where they can be (L3). Real sockets on loopback, each server closed by the
test itself; time injected where the linger's end is checked."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket

import orjson
import pytest

from gateway.front_transport import FrontTransport
from kvgate.gateway.stream import StreamRelay
from kvgate.httpfront.server import FrontServer, Request, Response


def _post(port: int, size: int, got: list[object], chunked: bool = False) -> None:
    """The stdlib client (as ``requests``/urllib3 do): the whole body sent, then the answer read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    body: object = b"x" * size
    if chunked:  # (an iterable body: http.client sends it chunked, 1 MiB a chunk)
        body = (b"x" * (1 << 20) for _ in range(size >> 20))
    try:
        conn.request(
            "POST",
            "/v1/completions",
            body=body,  # type: ignore[arg-type]
            headers={"Content-Type": "application/json"},
            encode_chunked=chunked,
        )
        resp = conn.getresponse()
        got.append(resp.status)
        got.append(resp.read())
    except OSError as e:
        got.append(e)
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_m1_a_413_reaches_a_client_that_sends_a_body_well_past_max_body_before_reading(
    chunked: bool,
) -> None:
    """M1: a body far past ``maxBodyBytes`` (here 64 KiB limit, 24 MiB body), announced or chunked (a 413
    partway). Before gw21 the 413 lingered reading and dropping for 2 s and the client read it; gw21's
    byte cap stopped reading after ``max_body`` + 64 KiB dropped, the client blocked in send, and after 2 s
    the abort gave it a BrokenPipe/reset instead of the 413 (FAILED on main before fixgw21)."""

    async def handler(req: Request) -> Response:
        return Response(body=b"ok")

    front = FrontServer({}, handler, max_body=64 << 10)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    front.watch_idle()
    got: list[object] = []
    try:
        await asyncio.to_thread(_post, server.sockets[0].getsockname()[1], 24 << 20, got, chunked)
    finally:
        front.close_all()
        server.close()
    assert got and got[0] == 413, got


class _SlowReader(FrontTransport):
    """A transport whose client takes its output slowly: the buffer shrinks by 1 KiB at each look."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.out += data
        self.pending += 200_000  # (as if an earlier pipelined answer's tail were still queued)

    def get_write_buffer_size(self) -> int:
        self.pending = max(0, self.pending - 1024)
        return self.pending

    def abort(self) -> None:
        self.aborted = True


async def test_l2_the_linger_end_does_not_cut_output_a_reading_client_is_still_taking() -> None:
    """L2: a 400 (bad chunk) whose answer is still leaving (the client reads, slowly). Before gw21 a 400
    closed gracefully (``close``: flushed under the send deadline, restarted by progress); gw21's linger
    had the sweeper abort at ``LINGER_S`` whatever was still queued: the client lost the tail (FAILED on
    main before fixgw21). Time injected (``sweep(now)``)."""

    async def handler(req: Request) -> Response:
        return Response(body=b"ok")

    front = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    proto = front.protocol()
    transport = _SlowReader()
    proto.connection_made(transport)  # type: ignore[arg-type]
    try:
        proto.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        for _ in range(20):
            await asyncio.sleep(0)
        assert transport.out.startswith(b"HTTP/1.1 400 "), transport.out[:40]
        now = asyncio.get_running_loop().time()
        for step in range(1, 6):  # five sweeps, a second apart: the client took bytes between each
            front.sweep(now + step)
        assert not transport.aborted
    finally:
        front.close_all()
        assert transport.closed  # closed gracefully: the flush goes on under the send deadline


def _pipelined_then_refused(port: int, got: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        s.sendall(
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999\r\n\r\n"
        )
        out = b""
        while data := s.recv(65536):
            out += data
        got.append(out)


async def test_a_refusal_behind_a_pipelined_answer_goes_out_after_it() -> None:
    """A request, then (same read) one refused from its head (413): the client gets the answer, then the
    413, then the end (FAILED on main: the first answer closed the connection, the 413 never went out;
    found fixing M1)."""

    async def handler(req: Request) -> Response:
        await asyncio.sleep(0)
        return Response(body=b"ok")

    front = FrontServer({"/a": handler}, handler, max_body=64 << 10)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    front.watch_idle()
    got: list[bytes] = []
    try:
        await asyncio.to_thread(_pipelined_then_refused, server.sockets[0].getsockname()[1], got)
    finally:
        front.close_all()
        server.close()
    assert got[0].startswith(b"HTTP/1.1 200 "), got
    assert got[0].count(b"HTTP/1.1 413 ") == 1, got


def _event(model_json: bytes, text: bytes = b"hi") -> bytes:
    return (
        b'data: {"id":"c","object":"text_completion","model":'
        + model_json
        + b',"choices":[{"text":"'
        + text
        + b'"}]}\n\n'
    )


@pytest.mark.parametrize("sent", ["mod\u00e8le-8b", "a<b>&c", "\U0001f600"])
def test_l3_escaped_spellings_are_still_put_back_on_every_path(sent: str) -> None:
    """A stream tries the escaped spellings only on a chunk where no plain one matched (L3): a chunk of
    escaped events, one whose first event has no name, an event past ``max_event_bytes`` passed on the fly
    in 7-byte pieces, and a plain chunk after escaped ones all come out with the client's name."""
    spelled = json.dumps(sent).encode()
    if spelled == orjson.dumps(sent):  # (Go's spelling: ``<>&`` escaped)
        spelled = (
            orjson.dumps(sent).replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
        )
    assert spelled != orjson.dumps(sent) and orjson.loads(spelled) == sent
    relay = StreamRelay(sent, "alias", strip_usage=False)
    chunks = [
        _event(spelled) + _event(spelled, b"again"),
        b": keep-alive\n\n" + _event(spelled),
        _event(orjson.dumps(sent)),
    ]
    out = b"".join(relay.feed(c) for c in chunks) + relay.finish()
    assert sent.encode() not in out and spelled not in out, out
    assert out.count(b'"model":"alias"') == 4, out
    big = StreamRelay(sent, "alias", strip_usage=False, max_event_bytes=64)
    event = _event(spelled, b"x" * 300)
    out = b"".join(big.feed(event[i : i + 7]) for i in range(0, len(event), 7)) + big.finish()
    assert out == event.replace(spelled, b'"alias"'), out
