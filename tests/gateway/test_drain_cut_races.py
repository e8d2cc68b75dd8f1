"""Review s16-doors M1, M2, L4 (tests by the reviewer; fixed by fixdoors16): the drain deadline's cut
(doors16, 5f68960) where the upstream's bytes are not whole events, or the stream had already said
[DONE], or the upstream body is framed by the close.

The upstream here is a raw asyncio server that writes the SSE body exactly as each case needs, then
holds the connection open (a model server still generating). The gateway is a real ``GatewayServer`` on
loopback; its pass-through relay is used (no model rewrite, no usage strip). Each test asserts what the
doors16 commit promises the client: an OpenAI error event that is a well-formed SSE event, as the last
event, and no event after ``[DONE]``; or that the client is told at all.

All fail before fixdoors16: the relays now send whole events only (a partial one waits for its end and
is dropped by the cut), end a stream whose ``[DONE]`` went out as complete, and mark a cut stream before
aborting its upstream (``Proxy._cut``), so a close-framed body's abort is not read as its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, make_pools
from gateway.sse_upstream import EV, SSE_HEAD, chunk, late_stream, listen_address, serve_raw
from kvgate.gateway.server import GatewayServer

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def _raw_upstream(pieces: list[bytes], *, chunked: bool = True) -> AsyncIterator[str]:
    """Answers every POST with 200 text/event-stream, writes ``pieces`` (each its own chunk, 50 ms
    apart), then holds the connection open until the client goes."""

    async def answer(_body: bytes, writer: asyncio.StreamWriter) -> None:
        if chunked:
            writer.write(SSE_HEAD)
        else:  # a body framed by the close (no content-length, no chunking)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for p in pieces:
            writer.write(chunk(p) if chunked else p)
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await serve_raw(answer)
    try:
        yield listen_address(server)
    finally:
        server.close()


async def _read_at_least(r: aiohttp.ClientResponse, n: int) -> bytes:
    """Reads ``r``'s body until at least ``n`` bytes have come (each read at most 10 s; the body must not
    end before) and returns them."""
    raw = b""
    while len(raw) < n:
        piece = await asyncio.wait_for(r.content.readany(), 10)
        assert piece, raw[-200:]
        raw += piece
    return raw


async def _read_rest(r: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """Reads the rest of ``r``'s body (each read at most 10 s): (the bytes, whether the body broke off
    incomplete, aiohttp's ``ClientPayloadError``)."""
    raw = b""
    try:
        while piece := await asyncio.wait_for(r.content.readany(), 10):
            raw += piece
    except aiohttp.ClientPayloadError:
        return raw, True
    return raw, False


async def _stop_mid_body(cfg: Any, req: dict, at_least: int) -> tuple[bytes, bool, GatewayServer]:
    """One stream (``req``) through a ``kvgate serve`` gateway on ``cfg``; once at least ``at_least`` bytes
    of its body have come, the gateway stops with a 0.1 s drain deadline: (the client's whole body,
    whether it broke off incomplete, the gateway)."""
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    stop = None
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(base_url(gw) + "/v1/completions", data=orjson.dumps(req)) as r,
        ):
            assert r.status == 200
            raw = await _read_at_least(r, at_least)
            stop = asyncio.create_task(gw.stop(drain_timeout=0.1))
            rest, broken = await _read_rest(r)
        await asyncio.wait_for(stop, 10)
    finally:
        if stop is None:
            await gw.stop(drain_timeout=0.1)
    return raw + rest, broken, gw


async def _drain_cut(address: str, usage: bool = False) -> tuple[bytes, GatewayServer]:
    """One stream through the gateway; once the upstream has written all its pieces, the gateway stops
    with a 0.3 s drain deadline: the client's whole body (aiohttp raises on a body cut mid-chunk)."""
    cfg = make_config([address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    req: dict = {"model": "m", "prompt": "x", "stream": True, "max_tokens": 50}
    if usage:  # the client asks for usage itself: the gateway's pass-through relay (chunks as they come)
        req["stream_options"] = {"include_usage": True}
    body = orjson.dumps(req)
    stop = None
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                assert r.status == 200
                raw = await r.content.readuntil(b"\n\n")
                await asyncio.sleep(0.3)  # (every piece written by now)
                stop = asyncio.create_task(gw.stop(drain_timeout=0.3))
                raw += await asyncio.wait_for(r.read(), 10)
            await asyncio.wait_for(stop, 10)
    finally:
        if stop is None:
            await gw.stop(drain_timeout=0.1)
    return raw, gw


def _events(raw: bytes) -> list[dict]:
    """Every SSE event's data as JSON ([DONE] as {"done": True}); raises on a corrupt event."""
    out = []
    for ev in raw.split(b"\n\n"):
        if not ev.strip():
            continue
        assert ev.startswith(b"data: ") and ev.count(b"data: ") == 1, f"corrupt SSE event: {ev!r}"
        data = ev.removeprefix(b"data: ")
        out.append({"done": True} if data == b"[DONE]" else orjson.loads(data))
    return out


async def test_a_drain_cut_between_two_halves_of_an_event_sends_a_well_formed_error_event() -> None:
    """The upstream's last chunk before the deadline ends mid-event (a TCP/chunk boundary inside an
    event: any large event, logprobs, a slow writer). The pass-through relay has already written that
    half to the client; the drain's error event is then appended to the half line:
    ``data: {"id":...,"choi` + `data: {"error": ...}`` -- one corrupt event, the openai SDK raises a
    JSON decode error instead of ``APIError``. The client asks for usage itself
    (``stream_options.include_usage``, as many SDK users and benchmarks do) and no rewrite applies, so the
    relay passes chunks through as they come (``StreamRelay`` untransformed). Fails on main (corrupt SSE
    event)."""
    half = len(EV) // 2
    async with _raw_upstream([EV, EV, EV[:half]]) as address:
        raw, _gw = await _drain_cut(address, usage=True)
    events = _events(raw)
    assert events[-1]["error"]["code"] == "service_unavailable"


async def test_no_error_event_after_done() -> None:
    """The upstream wrote ``data: [DONE]`` but not yet its body's end (the terminating chunk comes in a
    later write; vLLM/uvicorn send it separately). The deadline falls there: the client has [DONE] and
    then gets the drain's error event after it (and the request is counted ``stream_cut``, its usage
    lost). Fails on main: an event after [DONE]."""
    async with _raw_upstream([EV, EV, b"data: [DONE]\n\n"]) as address:
        raw, _gw = await _drain_cut(address)
    events = _events(raw)
    assert events[-1] == {"done": True}, events[-2:]


async def test_a_close_framed_upstream_stream_cut_by_the_drain_tells_its_client() -> None:
    """An upstream whose body is framed by the close (HTTP/1.1 ``connection: close``, no length, no
    chunking; the upstream client reads such bodies: ``_until_close``). ``cut_streams`` aborts the
    connection: ``transport.abort()`` calls ``connection_lost(None)``, which for such a body is its
    *clean* end, so the relay sees a normal end (``cut is None``), never looks at ``_cut``, writes no
    error event and counts the request ok: the client sees a stream that just stops (the openai SDK
    ends its iteration without an error: a silently truncated completion). Fails on main."""
    async with _raw_upstream([EV, EV, EV], chunked=False) as address:
        raw, _gw = await _drain_cut(address)
    events = _events(raw)
    assert "error" in events[-1], events[-2:]


async def drain_cut_clusters(
    address: str, path: str = "/v1/completions", pause_s: float = 0.3, post: dict[str, Any] | None = None
) -> bytes:
    """The same through ``kvgate serve --clusters`` (``GlobalGateway``, drain 0.3 s), its one cluster's
    gateway the raw upstream: ``post`` (``aiohttp``'s arguments; default a streamed completion) to
    ``path``, its first event read, then (``pause_s`` later) the stop: the whole body the client got. Its
    relay always passes chunks through as they come."""
    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.serve import GlobalGateway

    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=address),)), "round-robin", fetch=False, drain_s=0.3
    )
    await gw.start("127.0.0.1", 0)
    if post is None:
        post = {"data": orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 50})}
    stop = None
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{gw.port}{path}", **post) as r:
                assert r.status == 200
                raw = await r.content.readuntil(b"\n\n")
                if pause_s:
                    await asyncio.sleep(pause_s)
                stop = asyncio.create_task(gw.stop())
                raw += await asyncio.wait_for(r.read(), 10)
            await asyncio.wait_for(stop, 10)
    finally:
        if stop is None:
            await gw.stop()
    return raw


async def test_clusters_a_drain_cut_between_two_halves_of_an_event_sends_a_well_formed_error_event() -> None:
    """``kvgate serve --clusters`` (8e9cac0): the same corrupt last event. Fails on main."""
    half = len(EV) // 2
    async with _raw_upstream([EV, EV, EV[:half]]) as address:
        raw = await drain_cut_clusters(address)
    events = _events(raw)
    assert events[-1]["error"]["code"] == "service_unavailable"


async def test_clusters_no_error_event_after_done() -> None:
    """``kvgate serve --clusters`` (8e9cac0): the drain's error event after ``[DONE]``. Fails on main."""
    async with _raw_upstream([EV, EV, b"data: [DONE]\n\n"]) as address:
        raw = await drain_cut_clusters(address)
    events = _events(raw)
    assert events[-1] == {"done": True}, events[-2:]


async def test_a_stream_whose_first_chunk_comes_just_after_the_cut_is_cut_with_the_event() -> None:
    """Review s16-doors L6 (test by fixdoors16): at the drain's deadline one stream is mid-body and
    another request still waits for its upstream's answer, which comes 0.3 s after the deadline. The
    second stream was not among those ``cut_streams`` cut (it was not relaying yet): before, its relay
    ran on and it was cut with its connection (or the connection closed before its answer came), its
    client told nothing. Now a stream that starts relaying after the cut is cut at once the same way,
    and the stop waits up to ``CUT_WRITE_S`` for every request in flight, not only the streams it cut:
    its client gets its first event and the drain's error event. Fails before."""
    server = await late_stream(0.9)  # (the deadline falls 0.6 s after the late request: see below)
    address = listen_address(server)
    cfg = make_config([address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    stop = None

    async def late(s: aiohttp.ClientSession) -> bytes:
        body = orjson.dumps({"model": "m", "prompt": "late", "stream": True, "max_tokens": 50})
        async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
            assert r.status == 200
            return await r.read()

    try:
        async with aiohttp.ClientSession() as s:
            body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 50})
            async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                await r.content.readuntil(b"\n\n")
                b = asyncio.create_task(late(s))
                await asyncio.sleep(0.3)
                stop = asyncio.create_task(gw.stop(drain_timeout=0.3))
                a_raw = await asyncio.wait_for(r.read(), 10)
            b_raw = await asyncio.wait_for(b, 10)
            await asyncio.wait_for(stop, 10)
    finally:
        if stop is None:
            await gw.stop(drain_timeout=0.1)
        server.close()
    assert _events(a_raw)[-1]["error"]["code"] == "service_unavailable"
    events = _events(b_raw)
    assert events[0]["choices"][0]["text"] == "tok"
    assert events[-1]["error"]["code"] == "service_unavailable", events


async def test_a_drain_cut_inside_an_event_past_1_mib_closes_the_body_without_an_event() -> None:
    """fixedge16 (review s16-fixes-a #1): an event past 1 MiB is relayed as it comes (mid-event), so a
    drain cut inside it cannot send a whole error event: the body is closed mid-body, nothing glued onto
    the half event (before fixedge16 the stream was cut at 1 MiB with an error event, the endpoint
    charged a health failure)."""
    big = b'data: {"choices":[{"text":"' + b"x" * (3 << 19) + b'"}]}\n\n'
    half = big[: (1 << 20) + (1 << 17)]
    pieces = [EV] + [half[i : i + (1 << 16)] for i in range(0, len(half), 1 << 16)]
    req = {"model": "m", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    async with _raw_upstream(pieces) as address:
        raw, broken, _gw = await _stop_mid_body(make_config([address]), req, len(EV) + len(half))
    assert raw == EV + half  # the half event as it came, no error event glued onto it
    assert broken  # the client sees an incomplete body, not a short one
