"""Review s16-fixes-a (fcdf1a4, fixdoors16; the reviewer's tests, fixed by fixedge16): ``EventEdge``
on the pass-through relays.

1. (Low) A single SSE event over 1 MiB is legit OpenAI output (vLLM completions ``echo`` + ``logprobs``
   stream the whole prompt's logprobs in the first event: ~150 B/token x 8k tokens > 1 MiB). Before
   fcdf1a4 ``kvgate serve``'s pass-through relay (``StreamRelay`` untransformed) and ``kvgate serve
   --clusters``' relay passed it on; now ``EventEdge`` raises at 1 MiB: the stream is cut with an error
   event and (kvgate serve) the endpoint is charged a health failure.
2. (Low) SSE allows a lone CR as line ending (WHATWG: CRLF, LF or CR). ``EventEdge`` only knows
   ``\\n\\n`` / ``\\r\\n\\r\\n``: a CR-framed stream is held whole until its end (no streaming at all)
   or cut at 1 MiB. Before fcdf1a4 it went out chunk by chunk.

All pass on fcdf1a4^ (pass-through returned every chunk as it came; the clusters one needs EventEdge),
fail on 54fa4ba (before fixedge16).
"""

from __future__ import annotations

import pytest

from kvgate.gateway.stream import StreamRelay

BIG = b'data: {"choices":[{"text":"' + b"x" * (3 << 19) + b'"}]}\n\n'  # one 1.5 MiB event
DONE = b"data: [DONE]\n\n"


def _pieces(data: bytes, n: int = 1 << 16) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


async def _serve_pieces(pieces: list[bytes]):  # type: ignore[no-untyped-def]
    """A raw chunked text/event-stream upstream: writes ``pieces``, then holds the connection. (To run
    this test on fcdf1a4^, copy ``tests/gateway/sse_upstream.py`` there too.)"""
    import asyncio

    from gateway.sse_upstream import SSE_HEAD, chunk, serve_raw

    async def answer(_body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for p in pieces:
            writer.write(chunk(p))
            await writer.drain()
            await asyncio.sleep(0.01)

    return await serve_raw(answer)


def test_pass_through_relay_passes_an_event_over_1_mib() -> None:
    relay = StreamRelay(None, "m", False)  # untransformed: the pass-through relay
    out = b"".join(relay.feed(p) for p in _pieces(BIG + DONE))  # StreamTooLarge on main
    out += relay.finish()
    assert out == BIG + DONE


def test_clusters_edge_passes_an_event_over_1_mib() -> None:
    from kvgate.openai.sse import EventEdge  # (new in fcdf1a4)

    edge = EventEdge()  # as ``GlobalGateway._relay`` builds it
    out = b"".join(edge.feed(p) for p in _pieces(BIG + DONE))  # ValueError on main
    assert out + edge.rest() == BIG + DONE


def test_a_cr_framed_event_goes_out_when_it_ends() -> None:
    relay = StreamRelay(None, "m", False)
    ev = b'data: {"choices":[{"text":"t"}]}\r\r'
    assert relay.feed(ev) == ev  # main: b"" (held to the stream's end)


@pytest.mark.asyncio
async def test_kvgate_serve_pass_through_relays_an_event_over_1_mib_end_to_end() -> None:
    """End to end: a real ``GatewayServer``, the client asks for usage itself (pass-through relay), the
    upstream (raw, chunked) sends one 1.5 MiB event then ``[DONE]``. Before fcdf1a4 the client got both;
    on main it gets the stream-cut error event (and the endpoint a health failure: ``upstream_ok``
    False), so a client asking for ``echo`` + ``logprobs`` on a long prompt can get a healthy endpoint
    charged failures."""
    import asyncio

    import aiohttp
    import orjson

    from gateway.conftest import base_url, make_config, make_pools
    from gateway.sse_upstream import listen_address
    from kvgate.gateway.server import GatewayServer

    server = await _serve_pieces([*_pieces(BIG), DONE])
    address = listen_address(server)
    cfg = make_config([address])
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    try:
        req = {"model": "m", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
        async with (
            aiohttp.ClientSession() as s,
            s.post(base_url(gw) + "/v1/completions", data=orjson.dumps(req)) as r,
        ):
            assert r.status == 200
            raw = b""
            while not raw.endswith(DONE) and b'"error"' not in raw:
                piece = await asyncio.wait_for(r.content.readany(), 10)
                if not piece:
                    break
                raw += piece
    finally:
        await gw.stop(drain_timeout=0.1)
        server.close()
    assert b'"error"' not in raw, raw[-300:]
    assert raw == BIG + DONE
