"""rev-b35: review of 10ffd348 (fixqa35b). Real HTTP on loopback, an in-process ``GatewayServer`` in front
of a real aiohttp backend, raw-socket clients, state-polled waits (deadlines 30 s), ports 0.

F1: ``StreamRelay.done`` is set when ``[DONE]`` is FED to the relay, before it is written: a client that
left while the write holding ``[DONE]`` waited on it (back-pressure; or the send deadline cut it) never got
``[DONE]`` yet is counted complete (200, no ``client_gone``, its usage observed).
F2: typed streams (Responses, Anthropic Messages: no ``[DONE]``) read to their last event and then closed,
the upstream's chunked end not come yet: ``client_gone`` / 499 (the gap fixqa35b left).
F3: the front's 503 (body budget) refused from the head, the 405 ``route_check`` answers to ``Expect:
100-continue`` on a data route, and the 413 of an absolute-form target carried no ``x-request-id`` (the
first two) and left no access line, although the docs say every refusal once the head is read does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import AccessSink, make_config, request_errors, running_gateway, until
from kvgate.gateway.server import GatewayServer
from kvgate.openai.sse import ends_typed

pytestmark = pytest.mark.asyncio

WAIT_S = 30.0


class Held(Backend):
    """Streams whose last event (``[DONE]``, ``response.completed``, ``message_stop``) goes out, then the
    chunked end only when the test sets ``hold``. ``big``: a ~900 KB completion event first, written with
    its event end only in the write that carries ``[DONE]`` (so the transformed relay hands the client both
    in one write)."""

    def __init__(self, cut: bool = False) -> None:
        super().__init__("held")
        self.cut = cut  # (a typed stream: its connection cut after its last event, no chunked end)
        self.hold = asyncio.Event()
        self.last_written = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._big)
        app.router.add_post("/v1/responses", self._typed)
        app.router.add_post("/v1/messages", self._typed)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _big(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        choice = {"index": 0, "text": "x" * 900_000, "finish_reason": "length"}
        ev = {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [choice]}
        await resp.write(b"data: " + orjson.dumps(ev))  # (its event end comes with [DONE], below)
        usage = {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [],
                 "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}  # fmt: skip
        await resp.write(b"\n\ndata: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
        self.last_written.set()
        await self.hold.wait()
        await resp.write_eof()
        return resp

    async def _typed(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if request.path == "/v1/responses":
            r = {"id": "resp_1", "object": "response", "model": "m", "status": "in_progress"}
            done = {
                **r,
                "status": "completed",
                "usage": {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3},
            }
            events = [
                ("response.created", {"type": "response.created", "response": r}),
                ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
                ("response.completed", {"type": "response.completed", "response": done}),
            ]
        else:
            msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                   "usage": {"input_tokens": 2, "output_tokens": 0}}  # fmt: skip
            events = [
                ("message_start", {"type": "message_start", "message": msg}),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "hi"},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": 1},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
        for kind, obj in events:
            await resp.write(b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(obj)))
        self.last_written.set()
        if self.cut:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await self.hold.wait()
        await resp.write_eof()
        return resp


@asynccontextmanager
async def _gateway(
    extra: dict[str, Any] | None = None, cut: bool = False, rewrite: bool = False
) -> AsyncIterator[tuple[Held, GatewayServer, int]]:
    """``rewrite``: ``m`` sent as ``served`` (the transformed relay puts ``m`` back)."""
    b = await Held(cut).start()
    try:
        extra = {"accessLog": True, **(extra or {})}
        if rewrite:
            extra["rewrites"] = [{"matches": [{"model": {"type": "Exact", "value": "m"}}],
                                  "targets": [{"modelRewrite": "served", "weight": 1}]}]  # fmt: skip
        cfg = make_config([b.address], models=("m", "served"), extra=extra)
        async with running_gateway(cfg) as gw:
            yield b, gw, gw.port
    finally:
        b.hold.set()
        await b.stop()


def _post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: x", "content-type: application/json", *extra,
             f"content-length: {len(body)}", "", ""]  # fmt: skip
    return "\r\n".join(lines).encode() + body


async def _open(
    port: int, data: bytes, rcvbuf: int = 0, gw: GatewayServer | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``rcvbuf``: the client's receive buffer, and (``gw``) the gateway's send buffer of this connection,
    set before the request goes: a slow client whose kernel buffers do not absorb the answer (loopback's
    send buffer autotunes up to 4 MB: the gateway's transport would never hold a byte)."""
    s = socket.socket()
    if rcvbuf:  # (set before connect: a small window, the gateway's writes back-pressured)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    r, w = await asyncio.open_connection(sock=s)
    if gw is not None:
        front = gw._data[1]
        await until(lambda: any(c.transport is not None for c in front.connections), WAIT_S, "accepted")
        for c in front.connections:
            c.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    w.write(data)
    await w.drain()
    return r, w


async def _read_until(r: asyncio.StreamReader, done: Any) -> bytes:
    buf = b""
    async with asyncio.timeout(WAIT_S):
        while not done(buf):
            data = await r.read(65536)
            assert data, buf
            buf += data
    return buf


def _front_paused(gw: GatewayServer) -> bool:
    front = gw._data[1]
    return any(c.write_paused for c in front.connections)


def _ended(gw: GatewayServer) -> bool:
    return gw.proxy is not None and gw.proxy.inflight == 0


# --- F1 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["client_left", "send_timeout"])
async def test_F1_a_client_that_never_got_done_is_not_complete(access_sink: AccessSink, how: str) -> None:
    """The write that holds ``[DONE]`` (after a 900 KB event) is back-pressured: the client (4 KB receive
    buffer) reads nothing. It leaves (``client_left``), or the send deadline cuts it (``send_timeout``).
    It never got ``[DONE]``: 499 / ``client_gone``. On main: 200 and no error counted."""
    extra = {"limits": {"sendTimeoutSeconds": 1}} if how == "send_timeout" else {}
    async with _gateway(extra) as (b, gw, port):
        body = b'{"model":"m","prompt":"hi","max_tokens":3,"stream":true}'
        _r, w = await _open(port, _post("/v1/completions", body, "x-request-id: rev-b35-f1"), 4096, gw)
        await asyncio.wait_for(b.last_written.wait(), WAIT_S)
        await until(lambda: _front_paused(gw), WAIT_S, "the write holding [DONE] back-pressured")
        if how == "client_left":
            w.transport.abort()  # (it read none of it: gone before [DONE] reached it)
        await until(lambda: _ended(gw), WAIT_S, "the request ended (its handler cancelled)")
        b.hold.set()
        await until(access_sink.lines, WAIT_S, "the stream's access line")
        errors = {k: v for k, v in request_errors(gw).items() if v}
        if how == "send_timeout":
            assert gw._data[1].timed_out["send"] == 1
        w.close()
    line = access_sink.lines()[-1]
    assert errors == {("m", "m", "client_gone"): 1.0}, (errors, line)  # (main: {})
    assert line.startswith("rev-b35-f1 POST /v1/completions 499 "), line  # (main: 200)


# --- F2 -------------------------------------------------------------------------------------------------

TYPED = {
    "/v1/responses": (b'{"model":"m","input":"hi","stream":true}', b"event: response.completed\n"),
    "/v1/messages": (
        b'{"model":"m","max_tokens":3,"messages":[{"role":"user","content":"hi"}],"stream":true}',
        b"event: message_stop\n",
    ),
}


@pytest.mark.parametrize("rewrite", [False, True], ids=["pass-through", "rewrite"])
@pytest.mark.parametrize("path", sorted(TYPED))
async def test_F2_a_typed_stream_closed_after_its_last_event_is_complete(
    access_sink: AccessSink, path: str, rewrite: bool
) -> None:
    """As qa35b F1 for a typed stream: the client reads to the API's last event (``response.completed``,
    ``message_stop``) and closes; the upstream holds its chunked end. Fails on main (the gap fixqa35b
    left): ``client_gone`` +1 and the line says 499."""
    body, last = TYPED[path]
    async with _gateway(rewrite=rewrite) as (b, gw, port):
        r, w = await _open(port, _post(path, body, "x-request-id: rev-b35-f2"))
        await _read_until(r, lambda buf: last in buf and buf.endswith(b"\n\r\n"))
        await asyncio.wait_for(b.last_written.wait(), WAIT_S)
        w.close()
        await until(lambda: _ended(gw), WAIT_S, "the request ended (its handler cancelled)")
        b.hold.set()
        await until(access_sink.lines, WAIT_S, "the stream's access line")
        errors = {k: v for k, v in request_errors(gw).items() if v}
    line = access_sink.lines()[-1]
    assert errors == {}, (errors, line)  # (main: client_gone 1)
    assert line.startswith(f"rev-b35-f2 POST {path} 200 "), line  # (main: 499)


@pytest.mark.parametrize("path", sorted(TYPED))
async def test_F2_an_upstream_cut_after_a_typed_streams_last_event_ends_it_complete(
    access_sink: AccessSink, path: str
) -> None:
    """As a cut after ``[DONE]`` (``test_cut_after_done``): the upstream's connection cut after the API's
    last event gave the whole answer: no error event after it, the body's clean end, no ``stream_cut``,
    the cut counted in ``streams_cut_after_done``. Before: the cut's error event after ``message_stop``."""
    body, last = TYPED[path]
    async with _gateway(cut=True) as (_, gw, port):
        async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}{path}", data=body) as r:
            assert r.status == 200
            raw = await r.read()  # (aiohttp raises on a body cut short)
        assert raw.endswith(b"\n\n") and raw.rfind(b"event: ") == raw.rfind(last), raw[-300:]
        assert b"event: error" not in raw, raw[-300:]
        await until(access_sink.lines, WAIT_S, "the stream's access line")
        errors = {k: v for k, v in request_errors(gw).items() if v}
        cuts = gw.metrics.registry.get_sample_value("kvgate_gateway_streams_cut_after_done_total")
    assert errors == {}, errors
    assert cuts == 1
    assert f"POST {path} 200 " in access_sink.lines()[-1], access_sink.lines()


@pytest.mark.parametrize(
    ("events", "last"),
    [
        (b"event: response.completed\ndata: {}\n\n", True),
        (b"event: message_delta\ndata: {}\n\nevent:message_stop\r\ndata: {}\r\n\r\n", True),
        (b"data: {}\r\revent: response.incomplete\rdata: {}\r\r", True),
        (b"event: message_stop\ndata: {}\n\n: ping\n\nevent: ping\ndata: {}\n\n", False),
        (b'event: response.output_text.delta\ndata: {"delta":"\\nevent: response.completed"}\n\n', False),
        (b'data: {"type":"response.completed"}\n\n', True),  # (no event line: its JSON's "type", small36)
        (b"event: response.completed\ndata: {", False),  # (not whole)
    ],
)
async def test_F2_the_last_event_of_a_typed_stream(events: bytes, last: bool) -> None:
    assert ends_typed(events) is last


# --- F3 -------------------------------------------------------------------------------------------------


async def test_F3_a_503_of_the_body_budget_from_its_head_has_an_id_and_a_line(
    access_sink: AccessSink,
) -> None:
    """Connection A holds 5000 of the 10000-byte body budget (its body half sent); B's head announces 6000:
    503 from its head. Docs: every refusal once the head is read carries ``x-request-id`` and leaves its
    line on a data route. On main: neither."""
    extra = {"limits": {"maxBodyBytes": 10000, "maxBufferedBytes": 10000}}
    async with _gateway(extra) as (_, gw, port):
        head_a = _post("/v1/completions", b"", "x-request-id: rev-b35-a").replace(
            b"content-length: 0", b"content-length: 10000"
        )
        _ra, wa = await _open(port, head_a + b"{" + b" " * 4999)
        front = gw._data[1]
        await until(lambda: front.budget.used >= 5000, WAIT_S, "A's half body held")
        head_b = _post("/v1/completions", b"", "x-request-id: rev-b35-503").replace(
            b"content-length: 0", b"content-length: 6000"
        )
        rb, wb = await _open(port, head_b)
        got = await _read_until(rb, lambda buf: b"\r\n\r\n" in buf)
        wb.close()
        wa.close()
        assert got.startswith(b"HTTP/1.1 503 "), got
        assert b"\r\nx-request-id: rev-b35-503\r\n" in got.lower(), got  # (main: none)
        await until(access_sink.lines, WAIT_S, "the refusal's access line")  # (main: none)
    assert access_sink.lines()[-1].startswith("rev-b35-503 POST /v1/completions 503 model=- "), (
        access_sink.lines()
    )


async def test_F3_a_405_answered_to_expect_on_a_data_route_has_an_id_and_a_line(
    access_sink: AccessSink,
) -> None:
    """``GET /v1/completions`` with a body and ``Expect: 100-continue``: ``route_check``'s 405 from the head.
    Without ``Expect`` the handler answers the same 405 with ``x-request-id`` and an access line; with it:
    neither (main)."""
    async with _gateway() as (_, _gw, port):
        head = (b"GET /v1/completions HTTP/1.1\r\nhost: x\r\nx-request-id: rev-b35-405\r\n"
                b"expect: 100-continue\r\ncontent-length: 10\r\n\r\n")  # fmt: skip
        r, w = await _open(port, head)
        got = await _read_until(r, lambda buf: b"\r\n\r\n" in buf)
        w.close()
        assert got.startswith(b"HTTP/1.1 405 "), got
        assert b"\r\nx-request-id: rev-b35-405\r\n" in got.lower(), got  # (main: none)
        await until(access_sink.lines, WAIT_S, "the refusal's access line")  # (main: none)
    assert access_sink.lines()[-1].startswith("rev-b35-405 GET /v1/completions 405 "), access_sink.lines()


async def test_F3_a_413_of_an_absolute_form_target_leaves_its_line(access_sink: AccessSink) -> None:
    """``POST http://h/v1/completions`` (absolute-form, routed by its path) over ``maxBodyBytes``: 413 from
    its head, with its id and its line on the data route it names. Before: the raw target was the line's
    path, not a data route: no line."""
    async with _gateway({"limits": {"maxBodyBytes": 1000}}) as (_, _gw, port):
        head = (b"POST http://h/v1/completions HTTP/1.1\r\nhost: x\r\nx-request-id: rev-b35-413\r\n"
                b"content-length: 2000\r\n\r\n{")  # fmt: skip
        r, w = await _open(port, head)
        got = await _read_until(r, lambda buf: b"\r\n\r\n" in buf)
        w.close()
        assert got.startswith(b"HTTP/1.1 413 "), got
        assert b"\r\nx-request-id: rev-b35-413\r\n" in got.lower(), got
        await until(access_sink.lines, WAIT_S, "the refusal's access line")  # (before: none)
    assert access_sink.lines()[-1].startswith("rev-b35-413 POST /v1/completions 413 "), access_sink.lines()
