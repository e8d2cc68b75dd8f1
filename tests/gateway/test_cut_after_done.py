"""``kvgate serve``: an upstream whose connection is cut *after* its ``data: [DONE]`` (before the chunked
body's end) gave a complete answer, so its client gets a complete stream: ``[DONE]`` last, no error
event after it, the body's clean end; counted as a normal end (its usage observed, no ``stream_cut``) and
the endpoint not charged a failure (doors17; s16 leftover). ``kvgate serve --clusters`` already ended
such a stream complete (fixdoors16); before, ``kvgate serve`` wrote the upstream-cut error event after
``[DONE]`` and counted it cut, with both relays (pass-through and transformed)."""

from __future__ import annotations

import logging

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from extproc.test_error_counts import request_stats
from gateway.conftest import make_config, request_errors, running_gateway
from gateway.handler_server import TOKEN, USAGE, serve_handler
from gateway.test_drain_cut_races import _events


async def cut_after_done(request: web.Request) -> web.StreamResponse:
    """A token event, the usage event and ``[DONE]`` (the model a rewrite target's name), then the
    connection cut (no chunked terminator)."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for obj in (TOKEN, USAGE):
        await resp.write(b"data: " + orjson.dumps({**obj, "model": "served"}) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    assert request.transport is not None
    request.transport.abort()
    return resp


# include_usage False: the transformed relay (the gateway adds include_usage and strips the usage
# chunk); True: the pass-through relay. rewrite: the transformed relay puts the client's model back.
@pytest.mark.parametrize(
    ("include_usage", "rewrite"),
    [(False, False), (True, False), (True, True)],
    ids=["strip", "pass-through", "rewrite"],
)
async def test_an_upstream_cut_after_done_ends_the_stream_complete(
    include_usage: bool, rewrite: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kvgate.gateway")
    runner, port = await serve_handler(cut_after_done)
    address = f"127.0.0.1:{port}"
    rules = [{"matches": [{"model": {"type": "Exact", "value": "m"}}],
              "targets": [{"modelRewrite": "served", "weight": 1}]}]  # fmt: skip
    extra = {"rewrites": rules} if rewrite else None
    try:
        async with running_gateway(make_config([address], models=("m", "served"), extra=extra)) as gw:
            body: dict[str, object] = {"model": "m", "prompt": "x", "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                async with s.post(url, data=orjson.dumps(body)) as r:
                    assert r.status == 200
                    raw = await r.read()  # (aiohttp raises on a body cut short)
            events = _events(raw)
            assert events[-1] == {"done": True}, events  # fails before: the cut's error event after [DONE]
            assert not any("error" in e for e in events), events
            assert next(e["choices"] for e in events if "choices" in e) == TOKEN["choices"]
            assert sum("usage" in e for e in events) == (1 if include_usage else 0)
            want = "m" if rewrite else "served"
            assert {e["model"] for e in events if "model" in e} == {want}
            # A normal end: no error counted, the usage observed, the endpoint not charged.
            assert not any(v for v in request_errors(gw).values()), request_errors(gw)
            stats = request_stats(gw.metrics.registry)
            assert stats[("inference_objective_input_tokens_sum", "m", "served" if rewrite else "m")] == 7
            st = gw.health._state.get(address)
            assert st is None or st.failures == 0
            # Not silent (review s17-doors I1): counted and said at DEBUG; fails before (no counter).
            cuts = gw.metrics.registry.get_sample_value("kvgate_gateway_streams_cut_after_done_total")
            assert cuts == 1
            assert any("cut after its [DONE]" in r.getMessage() for r in caplog.records)
    finally:
        await runner.cleanup()


async def test_an_openai_sdk_stream_cut_after_done_ends_without_an_error() -> None:
    """The openai SDK reads the same stream to its end without an error (it stops at ``[DONE]``, so it
    passed before too: the raw test above is the one that fails first)."""
    runner, port = await serve_handler(cut_after_done)
    try:
        async with running_gateway(make_config([f"127.0.0.1:{port}"], models=("m", "served"))) as gw:
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="k", max_retries=0)
            try:
                stream = await client.completions.create(model="served", prompt="x", stream=True)
                texts = [c.choices[0].text async for c in stream]
            finally:
                await client.close()
            assert texts == ["a"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("strip", [False, True], ids=["pass-through", "transformed"])
@pytest.mark.parametrize("end", [b"\r\n\r", b"\n\r"], ids=["crlf", "lf-then-cr"])
def test_done_is_seen_when_its_blank_lines_last_lf_is_still_to_come(strip: bool, end: bytes) -> None:
    """A ``[DONE]`` event whose blank line ends with a CR, its LF in the next chunk (``\\r\\n\\r`` |
    ``\\n``), or whose blank line is a CR after an LF line end: the event has ended, so a cut after it
    ends the stream complete. Fails before: ``done`` stayed False (the endings checked lacked these), so
    such a cut sent the upstream-cut error event after ``[DONE]``."""
    from kvgate.gateway.stream import StreamRelay

    relay = StreamRelay(None, "m", strip_usage=strip)
    ev = b"data: " + orjson.dumps(TOKEN) + b"\n\n"
    assert relay.feed(ev) == ev
    assert relay.feed(b"data: [DONE]" + end) == b"data: [DONE]" + end
    assert relay.done
