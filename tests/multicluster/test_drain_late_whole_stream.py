"""Review s17-doors F3 (c8b0192): ``kvgate serve --clusters`` cuts a stream that starts relaying after the
drain deadline's cut even when its cluster's whole answer (events, ``[DONE]``, the body's end) has already
arrived: ``GlobalGateway._relay`` calls ``routed.abort()`` (aiohttp ``ClientResponse.close``) before reading
anything, and aiohttp's stream reader then raises before handing out the buffered bytes, so the client
gets only the drain's error event, its complete answer thrown away. ``kvgate serve`` does not cut such a
stream (``Proxy.cut_streams`` / ``_relay_stream``: ``if resp.received: continue``, "one whose body already
arrived whole is not cut"), so the two doors differ, and a complete answer is turned into an error.
Fixed: a stream whose upstream body arrived whole (``Routed.received``) is not cut, at its start or in
``_cut_streams``."""

from __future__ import annotations

import asyncio

import pytest

from gateway.sse_upstream import EV, SSE_HEAD, chunk, serve_raw
from gateway.test_drain_cut_races import _events
from multicluster.test_drain_cut_late_stream import one_mid_body_one_late

pytestmark = pytest.mark.asyncio

DONE = b"data: [DONE]\n\n"


async def _upstream(late_after_s: float) -> asyncio.Server:
    """Every POST: a 200 event stream. ``late`` in the prompt: answered ``late_after_s`` later, whole
    (head, one event, [DONE], the body's end, in one write); else one event and the stream held open."""

    async def answer(body: bytes, writer: asyncio.StreamWriter) -> None:
        if b"late" in body:
            await asyncio.sleep(late_after_s)
            writer.write(SSE_HEAD + chunk(EV) + chunk(DONE) + b"0\r\n\r\n")
        else:
            writer.write(SSE_HEAD + chunk(EV))

    return await serve_raw(answer)


async def test_a_whole_answer_arriving_after_the_cut_is_not_thrown_away() -> None:
    # the deadline (0.3 s) falls 0.6 s after the late request
    _a_raw, b_raw, _gw = await one_mid_body_one_late(await _upstream(0.9))
    # Fails on main: only the drain's error event (the event and [DONE] that had arrived are dropped).
    assert b_raw == EV + DONE, _events(b_raw)
