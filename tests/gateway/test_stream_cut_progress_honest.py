"""A relayed answer cut by ``requestTimeoutSeconds`` is spared the charge only for progress all through the
later half of its hold (``openai.progress``; closing-s19 "Gateway"). Before, one data event after the first
anywhere in the later half (a stream), or any piece there (a non-streamed body past ``whole_max``), spared
a wedged server: two data events then nothing, a ping event that carries a data line (Anthropic's ``event:
ping`` / ``{"type": "ping"}``), an empty ``data:`` keep-alive sharing a chunk with a comment, a late trickle
that stopped, one late piece, a body trickling blanks. Each such server, cut three times, must be charged
three failures and ejected once; a server steadily sending named events between pings is not charged.

Real loopback upstreams (``sse_upstream.serve_raw``) writing a scripted answer; the bound is 1 s."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, running_gateway
from gateway.sse_upstream import SSE_HEAD, chunk, listen_address, serve_raw
from gateway.test_stream_deadline_cut import _config  # (requestTimeoutSeconds 1 s, eject after 3)
from kvgate.gateway.server import GatewayServer
from kvgate.openai.progress import Progress, progress_events, progress_piece

TOKEN = b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"a"}]}\n\n'
NAMED = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"a"}}\n\n'
PING_EVENT = b'event: ping\ndata: {"type": "ping"}\n\n'
JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"

# (what it writes first, [(at seconds after the request, bytes)], (every seconds, bytes) after that or None)
Script = tuple[bytes, list[tuple[float, bytes]], tuple[float, bytes] | None]

FIRST = SSE_HEAD + chunk(TOKEN)
STREAMS: dict[str, Script] = {
    "two-data-events-then-wedged": (FIRST, [(0.55, chunk(TOKEN)), (0.6, chunk(TOKEN))], None),
    "ping-events-with-a-data-line": (FIRST, [], (0.1, chunk(PING_EVENT))),
    "comment-and-empty-data-in-one-chunk": (FIRST, [], (0.1, chunk(b": ping\n\ndata: \n\n"))),
    "late-trickle-then-wedged": (FIRST, [(t, chunk(TOKEN)) for t in (0.7, 0.75, 0.8)], None),
}
BODIES: dict[str, Script] = {
    "one-late-piece": (JSON_HEAD + b'{"id": "x", "pad": "' + b"x" * 1980, [(0.6, b"x" * 1000)], None),
    "blanks-trickling": (JSON_HEAD + b'{"id": "x", "pad": "' + b"x" * 1980 + b'"', [], (0.05, b" " * 10)),
}


class Scripted:
    """A model server answering every request with ``script`` (then holding the connection open)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def _answer(self, _body: bytes, w: asyncio.StreamWriter) -> None:
        self.requests += 1
        first, steps, every = self.script
        t0 = asyncio.get_running_loop().time()
        w.write(first)
        await w.drain()
        for at, data in steps:
            await asyncio.sleep(max(0.0, t0 + at - asyncio.get_running_loop().time()))
            w.write(data)
            await w.drain()
        while every is not None:
            await asyncio.sleep(every[0])
            w.write(every[1])
            await w.drain()

    async def start(self) -> str:
        self.server = await serve_raw(self._answer)
        return listen_address(self.server)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def _request(gw: GatewayServer, i: int, stream: bool) -> int:
    body = orjson.dumps({"model": "m", "prompt": f"p{i}", "stream": stream})
    async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=body) as r:
        with contextlib.suppress(aiohttp.ClientPayloadError):  # (a body cut mid-way)
            await r.read()
        return r.status


async def _charged(script: Script, stream: bool, backends: Any) -> tuple[int, int, int]:
    """Six requests round robin over the scripted server and a good one: (the scripted server's failures,
    ejections, requests it got)."""
    server = Scripted(script)
    address = await server.start()
    (good,) = await backends(1)
    try:
        async with running_gateway(_config([address, good.address])) as gw:
            if not stream:
                gw.proxy.whole_max = 1000  # relayed as it comes (``_relay_whole``)
            for i in range(6):
                assert await asyncio.wait_for(_request(gw, i, stream), 10) == 200
            st = gw.health._state.get(address)
            return (0 if st is None else st.failures), gw.health.ejections, server.requests
    finally:
        await server.stop()


@pytest.mark.parametrize("name", list(STREAMS))
async def test_a_stream_that_stopped_making_progress_is_charged(backends, name: str) -> None:
    """FAILED before: (0, 0, 3), each cut spared."""
    assert await _charged(STREAMS[name], True, backends) == (3, 1, 3)


@pytest.mark.parametrize("name", list(BODIES))
async def test_a_relayed_body_that_stopped_making_progress_is_charged(backends, name: str) -> None:
    """FAILED before: (0, 0, 3), each cut spared."""
    assert await _charged(BODIES[name], False, backends) == (3, 1, 3)


async def test_a_stream_of_named_events_between_pings_is_not_charged(backends) -> None:
    """The control: named data events every 50 ms, each chunk with a ping comment and a ping event too."""
    script = (SSE_HEAD + chunk(NAMED), [], (0.05, chunk(b": ping\n\n" + PING_EVENT + NAMED)))
    assert await _charged(script, True, backends) == (0, 0, 3)


async def test_a_data_event_past_1_mib_still_coming_is_progress(backends) -> None:
    """The other control: one data event of 3 MiB (past the relay's 1 MiB bound: it goes out as it comes),
    100 KiB every 50 ms, still coming at the cut: its pieces are progress (as before gw20)."""
    big = b'data: {"choices":[{"text":"' + b"x" * (3 << 20) + b'"}]}\n\n'
    pieces = [(0.05 * k, chunk(big[k * 102400 : (k + 1) * 102400])) for k in range(1, len(big) // 102400 + 1)]
    script = (SSE_HEAD + chunk(big[:102400]), pieces, None)
    assert await _charged(script, True, backends) == (0, 0, 3)


@pytest.mark.parametrize(
    ("block", "progress"),
    [
        (TOKEN, True),
        (NAMED, True),
        (b": ping\n\n", False),
        (PING_EVENT, False),
        (PING_EVENT.replace(b"\n", b"\r\n"), False),
        (b"event: ping\ndata: {}\n\n", False),  # (a ping event, whatever its data)
        (b'data: {"type":"ping"}\n\n', False),
        (b"data:\n\ndata: \r\n\r\n", False),
        (b": ping\n\n" + TOKEN, True),
        (PING_EVENT + NAMED, True),
        (b": keep-alive data: 1\n\n", False),  # (a comment's text)
        (b'data: {"text":"shopping"}\n\n', True),  # ("ping" in a token: the slow path, same answer)
        (b"", False),
    ],
)
def test_what_counts_as_a_streams_progress(block: bytes, progress: bool) -> None:
    assert progress_events(block) is progress


def test_a_pieces_progress_and_the_steady_rule() -> None:
    assert progress_piece(b'{"a"') and not progress_piece(b" \r\n\t") and not progress_piece(b"")
    p = Progress(0.0, 8.0)  # the later half: 4..8 s, a stretch of 1 s at most without progress
    for t in (0.5, 4.5, 5.4, 6.3, 7.2):
        p.seen(t)
    assert p.steady()  # (the last, 0.8 s before the cut)
    p = Progress(0.0, 8.0)
    for t in (0.5, 4.5, 5.4, 6.3, 6.9):
        p.seen(t)
    assert not p.steady()  # (1.1 s from the last to the cut)
    p = Progress(0.0, 8.0)
    for t in (5.2, 6.0, 7.0, 7.9):
        p.seen(t)
    assert not p.steady()  # (1.2 s from the later half's start to the first)
    assert not Progress(0.0, None).steady()
