"""small36: a stream's client that leaves once its last event went out has the whole answer (200, no
``client_gone``), in both doors, for every way a typed stream (Responses API, Anthropic Messages: no
``[DONE]``) may end:

1. a server that writes no ``event:`` lines (data-only): the last event is the JSON's top-level ``"type"``
   (``response.completed`` with pydantic's field order, ``type`` last, as vLLM writes it; ``message_stop``);
2. a last event over 1 MiB (a long answer's ``response.completed``), which the relays pass through as it
   comes: judged on its head and its last bytes, never held whole;
3. ``kvgate serve --clusters``' relay: a client gone after ``[DONE]`` or a typed stream's last event was
   ``client_gone`` there (``kvgate serve``: 200 since qa35b / rev-b35), and a cluster cut after a typed
   stream's last event was ``stream_cut``.

Real loopback: a raw upstream (``serve_raw``) writes the events and holds its chunked end; an aiohttp client
reads to the last event's end and closes. Ports 0, state-polled waits (30 s). Before: ``client_gone`` 1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest

from gateway.conftest import error_codes, make_config, request_errors, running_gateway, until
from gateway.sse_upstream import SSE_HEAD, Answer, chunk, listen_address, serve_raw
from kvgate.gateway.server import GatewayServer
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from kvgate.openai.sse import EventEdge, ends_typed

pytestmark = pytest.mark.asyncio

WAIT_S = 30.0
BIG = 1_500_000  # (over the relays' 1 MiB bound: passed through as it comes)
_R = {"id": "resp_1", "object": "response", "model": "m", "status": "in_progress", "output": []}
_USAGE = {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3}


def _ev(obj: object, name: str | None = None) -> bytes:
    head = b"event: %s\n" % name.encode() if name else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def _completed(text: str) -> dict[str, object]:
    out = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
    return {**_R, "status": "completed", "output": out, "usage": _USAGE}


def _responses(big: bool, named: bool) -> bytes:
    text = "x" * (BIG if big else 2)
    start = {"type": "response.created", "response": _R}
    delta = {"type": "response.output_text.delta", "delta": "xx"}
    # (pydantic's field order, as vLLM writes it: ``type`` last, after the whole answer)
    done = {"response": _completed(text), "sequence_number": 2, "type": "response.completed"}
    if named:  # (OpenAI's order: ``type`` first)
        done = {"type": "response.completed", "response": _completed(text), "sequence_number": 2}
    names = ("response.created", "response.output_text.delta", "response.completed") if named else (None,) * 3
    return b"".join(_ev(o, n) for o, n in zip((start, delta, done), names, strict=True))


def _messages() -> bytes:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
           "usage": {"input_tokens": 2, "output_tokens": 0}}  # fmt: skip
    return b"".join(
        _ev(o)
        for o in (
            {"type": "message_start", "message": msg},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
            {"type": "message_stop"},
        )
    )


_COMPLETIONS = (
    _ev({"id": "c", "object": "text_completion", "model": "m", "choices": [{"index": 0, "text": "tok"}]})
    + b"data: [DONE]\n\n"
)
# case -> (path, request body, the upstream's events)
CASES = {
    "done": ("/v1/completions", {"prompt": "hi", "max_tokens": 3}, _COMPLETIONS),
    "responses-data-only": ("/v1/responses", {"input": "hi"}, _responses(False, False)),
    "messages-data-only": (
        "/v1/messages",
        {"max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]},
        _messages(),
    ),
    "responses-big-named": ("/v1/responses", {"input": "hi"}, _responses(True, True)),
    "responses-big-data-only": ("/v1/responses", {"input": "hi"}, _responses(True, False)),
}


def _upstream(events: bytes, cut: asyncio.Event | None) -> Answer:
    async def answer(_body: bytes, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + chunk(events))  # (no chunked end: held, or cut once ``cut`` is set)
        await w.drain()
        if cut is not None:
            await cut.wait()
            w.transport.abort()

    return answer


async def _read_then_close(port: int, case: str, rewrite: bool = False) -> bytes:
    """Reads the body to the last event's end (the upstream holds its chunked end), then closes."""
    path, body, events = CASES[case]
    data = orjson.dumps({"model": "m", "stream": True, **body})
    got = b""
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"http://127.0.0.1:{port}{path}", data=data)
        assert r.status == 200
        async with asyncio.timeout(WAIT_S):
            while len(got) < len(events):
                piece = await r.content.readany()
                assert piece, got[-200:]
                got += piece
        r.close()  # (the openai SDK's ``Stream`` closes at the last event)
    if not rewrite:
        assert got == events
    return got


@asynccontextmanager
async def _serve(case: str, rewrite: bool = False) -> AsyncIterator[GatewayServer]:
    server = await serve_raw(_upstream(CASES[case][2], None))
    extra: dict[str, object] = {}
    if rewrite:  # (``m`` sent as ``served``: the transformed relay)
        extra["rewrites"] = [{"matches": [{"model": {"type": "Exact", "value": "m"}}],
                              "targets": [{"modelRewrite": "served", "weight": 1}]}]  # fmt: skip
    try:
        cfg = make_config([listen_address(server)], models=("m", "served"), extra=extra)
        async with running_gateway(cfg) as gw:
            yield gw
    finally:
        server.close()


@pytest.mark.parametrize("rewrite", [False, True], ids=["pass-through", "rewrite"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_serve_a_client_gone_after_the_last_event_is_complete(case: str, rewrite: bool) -> None:
    async with _serve(case, rewrite) as gw:
        await _read_then_close(gw.port, case, rewrite)
        await until(lambda: gw.proxy is not None and gw.proxy.inflight == 0, WAIT_S, "the request ended")
        errors = {k: v for k, v in request_errors(gw).items() if v}
    assert errors == {}, errors  # (before, data-only and big: client_gone 1)


@asynccontextmanager
async def _hub(case: str, cut: asyncio.Event | None = None) -> AsyncIterator[GlobalGateway]:
    server = await serve_raw(_upstream(CASES[case][2], cut))
    spec = ClusterSpec("east", gateway=listen_address(server))
    gw = GlobalGateway(ClustersConfig((spec,)), "round-robin", fetch=False, seed=1)
    await gw.start("127.0.0.1", 0)
    try:
        yield gw
    finally:
        await gw.stop()
        server.close()


@pytest.mark.parametrize("case", sorted(CASES))
async def test_clusters_a_client_gone_after_the_last_event_is_complete(case: str) -> None:
    async with _hub(case) as gw:
        await _read_then_close(gw.port, case)
        await until(lambda: gw.inflight == 0, WAIT_S, "the request ended")
        errors = {k: v for k, v in error_codes(gw.metrics.registry).items() if v}
    assert errors == {}, errors  # (before: client_gone 1, [DONE] too)


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c != "done"])
async def test_clusters_a_cut_after_a_typed_streams_last_event_ends_it_complete(case: str) -> None:
    """As a cut after ``[DONE]`` (``tests/multicluster/test_cut_after_done.py``): the whole answer, the body's
    clean end, no ``stream_cut``, counted as cut after done. Before: ``stream_cut`` and the cut's error
    event after the last event."""
    path, body, events = CASES[case]
    cut = asyncio.Event()
    async with _hub(case, cut) as gw:
        data = orjson.dumps({"model": "m", "stream": True, **body})
        async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{gw.port}{path}", data=data) as r:
            assert r.status == 200
            raw = b""
            async with asyncio.timeout(WAIT_S):
                while len(raw) < len(events):
                    piece = await r.content.readany()
                    assert piece, raw[-200:]
                    raw += piece
                cut.set()  # (the last event relayed: now the cluster's connection is cut)
                raw += await r.read()  # (aiohttp raises on a body cut short)
        errors = {k: v for k, v in error_codes(gw.metrics.registry).items() if v}
        cuts = gw.metrics.registry.get_sample_value(
            "kvgate_multicluster_streams_cut_after_done_total", {"cluster": "east"}
        )
    assert raw == events
    assert errors == {}, errors
    assert cuts == 1


@pytest.mark.parametrize(
    ("events", "last"),
    [
        (b'data: {"type":"response.completed","response":{}}\n\n', True),
        (b'data: {"response":{"type":"x"},"sequence_number":3,"type":"response.completed"}\r\n\r\n', True),
        (b'data: { "type" : "message_stop" }\n\n', True),
        (b'data: {"a":1,"type":"message_stop","b":2}\n\n', True),  # (short: parsed whole)
        (b'data: {"a":{"type":"message_stop"}}\n\n', False),  # (not top-level)
        (b'data: {"type":"message_delta","note":"message_stop"}\n\n', False),
        (b'data: {"text":"\\"type\\":\\"message_stop\\"}"}\n\n', False),  # (in a string)
        (b'data: {"type":"message_stop"}\n\ndata: {"type":"ping"}\n\n', False),
        (b'event: ping\ndata: {}\n\ndata: {"type":"message_stop"}\r\r', True),
        (b'event: response.output_text.delta\ndata: {"type":"response.completed"}\n\n', False),
    ],
)
async def test_a_data_only_typed_streams_last_event(events: bytes, last: bool) -> None:
    assert ends_typed(events) is last


@pytest.mark.parametrize("step", [1 << 16, 1_000_003])
@pytest.mark.parametrize("case", ["responses-big-named", "responses-big-data-only"])
async def test_a_big_last_event_is_judged_without_holding_it(case: str, step: int) -> None:
    """The event past the bound goes out as it comes (``mid_event``): what the edge holds stays under its
    bound, and its end is read as the stream's (``done``) only once its last bytes went out."""
    events = CASES[case][2]
    edge = EventEdge(typed=True)
    out = b""
    for i in range(0, len(events), step):
        out += edge.feed(events[i : i + step])
        assert len(edge._held) <= 1 << 20
        assert edge.done is (i + step >= len(events)), i
    assert out == events
    edge = EventEdge(typed=True)  # (a big event that is not the last: not done)
    edge.feed(events.replace(b"response.completed", b"response.output_text.done"))
    assert not edge.done
