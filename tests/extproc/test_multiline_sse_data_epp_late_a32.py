"""An SSE event whose JSON spans several ``data:`` lines (the SSE spec joins them with newlines; qa32a Q7)
read through ``kvgate epp`` as ``kvgate serve`` reads it (``kvgate.openai.usage.event_obj``): its usage
counted, the client's model name put back in each event. Before (main 4b9ad993), ``SSEScanner`` read one
line at a time: none of those lines decodes alone, so the EPP counted no input tokens and the client saw
the rewrite's target name."""

from __future__ import annotations

import json

import aiohttp
import orjson
import pytest

from extproc.test_llmd_request_families import scrape, total
from flowcontrol.test_doors import eventually
from gateway.test_multiline_sse_data_qa32 import USAGE, MultilineBackend, _events, _multiline
from kvgate.extproc.output_events import CountingScanner
from kvgate.extproc.testing import EnvoyHarness
from kvgate.openai.sse import SSEScanner


async def test_epp_reads_the_usage_and_puts_the_model_back_in_multiline_events(start_epp) -> None:
    backend = await MultilineBackend("b0").start()
    try:
        epp = await start_epp([backend.address], model_rewrite=lambda m: "m2" if m == "alias" else None)
        doc = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
        async with aiohttp.ClientSession() as http:
            res = await EnvoyHarness(epp.stub, http).request(
                "POST", "/v1/chat/completions", orjson.dumps(doc)
            )
        stats = epp.metrics.requests
        await eventually(lambda: stats.children and not any(stats.running.values()), "the request ended")
        s = await scrape(f"http://127.0.0.1:{epp.server.metrics_port}/metrics")
    finally:
        await backend.stop()
    assert res.status == 200, res.body
    assert backend.received[0][2]["model"] == "m2"
    events = _events(res.body)
    assert len(events) == 4 and events[-1]["usage"] == USAGE, res.body
    assert [e["model"] for e in events] == ["alias"] * 4, res.body
    assert total(s, "llm_d_epp_request_input_tokens_sum") == USAGE["prompt_tokens"]
    assert total(s, "llm_d_epp_request_output_tokens_sum") == USAGE["completion_tokens"]


CHUNK = {"id": "c", "object": "chat.completion.chunk", "model": "m2",
         "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}  # fmt: skip


@pytest.mark.parametrize("size", [1, 5, 100_000])
@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_scanner_holds_a_multiline_event_to_its_end_in_any_chunking(size: int, end: bytes) -> None:
    usage = {**CHUNK, "choices": [], "usage": USAGE}
    stream = (
        b"data: " + json.dumps(CHUNK).encode() + end + end
        + b": ping" + end + b"id: 7" + end + _multiline(usage, end) + b"data: [DONE]" + end + end
    )  # fmt: skip
    for rewrite in (None, "alias"):
        sc = SSEScanner(rewrite)
        out = b"".join(sc.feed(stream[i : i + size]) for i in range(0, len(stream), size)) + sc.finish()
        assert sc.usage is not None and sc.usage.prompt_tokens == USAGE["prompt_tokens"]
        if rewrite is None:
            continue
        assert b": ping" + end + b"id: 7" + end in out
        models = [e["model"] for e in _events(out.replace(b"\r\n", b"\n"))]
        assert models == ["alias", "alias"], out


def test_scanner_passes_a_multiline_event_without_a_model_as_it_came() -> None:
    event = _multiline({"type": "ping", "n": 1})
    sc = SSEScanner("alias")
    assert sc.feed(event) == event


def test_a_held_event_never_decoded_goes_out_as_it_came_bounded() -> None:
    bad = b"data: {not json\ndata: still not\n\n"
    sc = SSEScanner("alias")
    assert sc.feed(bad) == bad
    big = b"data: {" + b"x" * 100 + b"\n" + b"data: y\n" * 150_000  # past MAX_SSE_LINE, no blank line
    sc = SSEScanner("alias")
    out = sc.feed(big) + sc.finish()
    assert out == big and sc._event is None


def test_counting_scanner_counts_from_a_multiline_first_output() -> None:
    sc = CountingScanner()
    compact = orjson.dumps(CHUNK)
    cut = compact.index(b'"delta"')
    two_lines = b"data: " + compact[:cut] + b"\ndata: " + compact[cut:] + b"\n\n"
    sc.feed(two_lines + b"data: " + compact + b"\n\n")
    sc.finish()
    assert sc.output_events == 2
