"""``kvgate serve``'s transformed relay (``StreamRelay`` with a model rewrite and/or the usage strip: every
stream whose client did not ask for ``include_usage``) follows the SSE rules the pass-through relay's
``EventEdge`` follows (doors17; s16 leftover): lines end with CRLF, LF or a lone CR, and an event past
1 MiB (completions ``echo`` + ``logprobs`` on a long prompt) is no error. Before, it knew only ``\\n\\n`` /
``\\r\\n\\r\\n``: a CR-framed stream was held whole to its end (or cut at 1 MiB) and its usage chunk leaked
to the client; an event past 1 MiB raised ``StreamTooLarge``: the stream was cut with an error event and
the healthy endpoint charged a failure. Now such an event goes out as it comes, its ``model`` still put
back to the client's name (no un-rewritten name leaks), never a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.conftest import make_config, request_errors, running_gateway
from gateway.sse_upstream import SSE_HEAD, listen_address, serve_raw
from kvgate.gateway.stream import StreamRelay
from kvgate.scheduling.types import Usage

SENT, CLIENT = "served-model", "m"


def _event(obj: dict, end: bytes = b"\n\n") -> bytes:
    return b"data: " + orjson.dumps(obj) + end


def _token(text: str, model: str = SENT, end: bytes = b"\n\n") -> bytes:
    return _event({"id": "c", "object": "text_completion", "model": model,
                   "choices": [{"index": 0, "text": text}]}, end)  # fmt: skip


def _usage(model: str = SENT, end: bytes = b"\n\n") -> bytes:
    return _event({"id": "c", "object": "text_completion", "model": model, "choices": [],
                   "usage": {"prompt_tokens": 7, "completion_tokens": 2}}, end)  # fmt: skip


BIG_TEXT = "x" * (3 << 19)  # one event of 1.5 MiB


def _stream(end: bytes) -> tuple[bytes, bytes]:
    """(what the upstream sends, what the client must get with rewrite + strip) with ``end`` as each
    event's blank line (``\\n\\n``, ``\\r\\r``, ``\\r\\n\\r\\n``)."""
    done = b"data: [DONE]" + end
    up = _token("a", end=end) + _token(BIG_TEXT, end=end) + _token("b", end=end) + _usage(end=end) + done
    want = _token("a", CLIENT, end) + _token(BIG_TEXT, CLIENT, end) + _token("b", CLIENT, end) + done
    return up, want


def _relay_all(relay: StreamRelay, pieces: list[bytes]) -> bytes:
    out = b"".join(relay.feed(p) for p in pieces)
    return out + relay.finish()


@pytest.mark.parametrize("end", [b"\n\n", b"\r\r", b"\r\n\r\n"], ids=["lf", "cr", "crlf"])
@pytest.mark.parametrize("size", [1 << 16, 4093])
def test_an_event_past_1_mib_goes_out_rewritten_and_the_usage_chunk_stripped(end: bytes, size: int) -> None:
    """Fails before: ``StreamTooLarge`` at 1 MiB (lf, crlf); cr: the same (no ``\\n\\n`` ever found)."""
    up, want = _stream(end)
    relay = StreamRelay(SENT, CLIENT, strip_usage=True)
    out = _relay_all(relay, [up[i : i + size] for i in range(0, len(up), size)])
    assert out == want
    assert relay.usage == Usage(7, 2)
    assert relay.done and not relay.mid_event


def test_a_cr_framed_event_goes_out_when_it_ends() -> None:
    """Fails before: held (``b""``) until the stream's end."""
    relay = StreamRelay(None, CLIENT, strip_usage=True)
    ev = _token("t", end=b"\r\r")
    assert relay.feed(ev) == ev
    assert relay.feed(_usage(end=b"\r\r")) == b""  # stripped, read
    assert relay.usage == Usage(7, 2)


def test_a_model_name_split_across_chunks_of_a_passing_event_is_put_back() -> None:
    """Inside an event past the bound, the model name may be split anywhere between two chunks: it is
    held back until whole and rewritten, never sent as the upstream's name."""
    ev = b'data: {"choices":[{"text":"' + b"y" * 2000 + b'"}],"model":"' + SENT.encode() + b'","x":1}\n\n'
    at = ev.index(b'"model"')
    for cut in range(at - 2, at + len(SENT) + 12):
        relay = StreamRelay(SENT, CLIENT, strip_usage=False, max_event_bytes=100)
        out = relay.feed(ev[:cut])
        assert relay.mid_event
        out += relay.feed(ev[cut:])
        assert out == ev.replace(SENT.encode(), CLIENT.encode()), cut
        assert not relay.mid_event


def test_a_blank_line_split_across_chunks_ends_a_passing_event() -> None:
    """A passing event's blank line split between two chunks (its CRLF, CR or LF halves) ends it; the
    next event is then a whole event again (its usage chunk stripped)."""
    for end in (b"\n\n", b"\r\r", b"\r\n\r\n"):
        big = _token("z" * 300, end=end)
        for cut in range(len(big) - len(end), len(big) + 1):
            relay = StreamRelay(SENT, CLIENT, strip_usage=True, max_event_bytes=200)
            out = relay.feed(big[:cut]) + relay.feed(big[cut:] + _usage(end=end))
            assert out == _token("z" * 300, CLIENT, end), (end, cut)
            assert relay.usage == Usage(7, 2) and not relay.mid_event


def test_only_the_lf_of_a_stripped_chunks_crlf_is_dropped() -> None:
    """The usage chunk the gateway strips ends with a CR whose LF opens the next upstream chunk: that LF
    goes with it (a stray empty line would open the next event: a client splitting on ``\r\n\r\n``
    would miss ``[DONE]``). But an LF that belongs to the next event's bytes, which followed the CR in the
    same chunk, stays."""
    usage = _usage(end=b"\r\n\r\n")
    relay = StreamRelay(None, CLIENT, strip_usage=True)
    assert relay.feed(usage[:-1]) == b""  # stripped; its last LF still to come
    assert relay.feed(b"\ndata: [DONE]\r\n\r\n") == b"data: [DONE]\r\n\r\n"
    relay = StreamRelay(None, CLIENT, strip_usage=True)
    assert relay.feed(usage[:-1] + b"data: [DONE]") == b""  # a lone CR ended it; [DONE] is held
    assert relay.feed(b"\n\n") == b"data: [DONE]\n\n"
    assert relay.done and relay.usage == Usage(7, 2)


ENDS = [b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r\n", b"\r\n\n", b"\r\r\n"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(ENDS), min_size=5, max_size=5),
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=40),
)
def test_any_split_relays_the_same_events(ends: list[bytes], sizes: list[int]) -> None:
    """Whatever the chunking and each event's line ends (LF, CR, CRLF, mixed), with a small bound so an
    event passes it: the events out as they came less the usage chunk, the model put back, the usage
    read, ``[DONE]`` seen."""
    e = ends
    done = b"data: [DONE]" + e[4]
    up = _token("a", end=e[0]) + _token("b" * 250, end=e[1]) + b": ping" + e[2] + _usage(end=e[3]) + done
    want = _token("a", CLIENT, e[0]) + _token("b" * 250, CLIENT, e[1]) + b": ping" + e[2] + done
    pieces, pos = [], 0
    for n in sizes:
        pieces.append(up[pos : pos + n])
        pos += n
    pieces.append(up[pos:])
    relay = StreamRelay(SENT, CLIENT, strip_usage=True, max_event_bytes=200)
    assert _relay_all(relay, [p for p in pieces if p]) == want
    assert relay.usage == Usage(7, 2) and relay.done


# --- end to end: a real gateway on loopback, a raw chunked upstream ------------------------------


async def _upstream(write: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> asyncio.Server:
    """Answers each POST with a 200 chunked event stream whose body ``write`` writes (``chunk(w, b)``
    for each piece), then the body's end."""

    async def answer(_body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        await write(writer)
        writer.write(b"0\r\n\r\n")

    return await serve_raw(answer)


async def chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


def _rewrite_config(address: str) -> object:
    rules = [{"matches": [{"model": {"type": "Exact", "value": CLIENT}}],
              "targets": [{"modelRewrite": SENT, "weight": 1}]}]  # fmt: skip
    return make_config([address], models=(CLIENT, SENT), extra={"rewrites": rules})


async def test_a_cr_framed_stream_streams_through_the_openai_sdk() -> None:
    """The upstream sends its first event and waits until the client has it before sending the rest:
    before, the transformed relay held a CR-framed stream to its end (the test timed out) and its
    usage chunk reached the client."""
    first_read = asyncio.Event()

    async def write(w: asyncio.StreamWriter) -> None:
        await chunk(w, _token("a", end=b"\r\r"))
        await asyncio.wait_for(first_read.wait(), 10)
        await chunk(w, _token("b", end=b"\r\r") + _usage(end=b"\r\r") + b"data: [DONE]\r\r")

    server = await _upstream(write)
    address = listen_address(server)
    try:
        async with running_gateway(_rewrite_config(address)) as gw:  # type: ignore[arg-type]
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="k", max_retries=0)
            got = []
            try:
                stream = await client.completions.create(model=CLIENT, prompt="x", stream=True)
                async with asyncio.timeout(5):
                    async for c in stream:
                        got.append((c.model, [ch.text for ch in c.choices]))
                        first_read.set()
            finally:
                await client.close()
            assert got == [(CLIENT, ["a"]), (CLIENT, ["b"])]  # no usage chunk, the client's model
            assert not any(v for v in request_errors(gw).values())
    finally:
        server.close()


async def test_an_event_past_1_mib_through_a_rewrite_is_relayed_and_charges_no_failure() -> None:
    """Fails before: the stream was cut at 1 MiB with the upstream-cut error event (``StreamTooLarge``),
    counted ``stream_cut``, the endpoint charged a failure."""
    big = _token(BIG_TEXT)

    async def write(w: asyncio.StreamWriter) -> None:
        for i in range(0, len(big), 1 << 16):
            await chunk(w, big[i : i + (1 << 16)])
        await chunk(w, _usage() + b"data: [DONE]\n\n")

    server = await _upstream(write)
    address = listen_address(server)
    try:
        async with running_gateway(_rewrite_config(address)) as gw:  # type: ignore[arg-type]
            body = orjson.dumps({"model": CLIENT, "prompt": "x", "stream": True})
            url = f"http://127.0.0.1:{gw.port}/v1/completions"
            async with aiohttp.ClientSession() as s, s.post(url, data=body) as r:
                assert r.status == 200
                raw = await asyncio.wait_for(r.read(), 20)
            assert raw == _token(BIG_TEXT, CLIENT) + b"data: [DONE]\n\n"
            assert SENT.encode() not in raw
            assert not any(v for v in request_errors(gw).values()), request_errors(gw)
            st_ = gw.health._state.get(address)
            assert st_ is None or st_.failures == 0
    finally:
        server.close()


async def test_a_drain_cut_inside_a_passing_event_closes_the_body_without_an_event() -> None:
    """The transformed relay (the client did not ask for usage) inside an event past 1 MiB: as the
    pass-through relay (``test_drain_cut_races.py``), a drain cut closes the body mid-body, nothing glued
    onto the half event, which went out with the client's model. Fails before: cut at 1 MiB with the
    upstream-cut error event (``StreamTooLarge``)."""
    from gateway.test_drain_cut_races import _raw_upstream, _stop_mid_body

    big = _token(BIG_TEXT)
    half = big[: (1 << 20) + (1 << 17)]
    pieces = [_token("a"), *(half[i : i + (1 << 16)] for i in range(0, len(half), 1 << 16))]
    want = _token("a", CLIENT) + half.replace(b'"model":"served-model"', b'"model":"m"')
    req = {"model": CLIENT, "prompt": "x", "stream": True}
    async with _raw_upstream(pieces) as address:
        # (the last bytes may wait for more)
        raw, broken, gw = await _stop_mid_body(_rewrite_config(address), req, len(want) - 64)
    assert want.startswith(raw) and len(raw) >= len(want) - 64, raw[-100:]
    assert SENT.encode() not in raw
    assert broken  # the client sees an incomplete body, not a short one
    assert request_errors(gw)[("m", "served-model", "stream_cut")] == 1
