"""``kvgate serve --clusters``' per-request families (``kvgate serve``'s names, labels, buckets): a relayed
stream's usage read from its bounded tail, a JSON 2xx's from its body (the three-door comparison is
``tests/extproc/test_error_counts.py``)."""

from __future__ import annotations

import aiohttp
import orjson

from extproc.test_error_counts import request_stats
from flowcontrol.test_doors import eventually
from gateway.backend import Backend
from gateway.handler_server import cut_after_usage, serve_handler
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


async def test_a_relayed_streams_usage_is_counted() -> None:
    backend = await Backend("b0", tokens=5).start()
    mc = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin",
                       fetch=False, seed=1)  # fmt: skip
    await mc.start("127.0.0.1", 0)
    try:
        body = {"model": "m", "prompt": "x", "max_tokens": 5, "stream": True}
        async with aiohttp.ClientSession() as s:
            for opts in ({"include_usage": True}, None):  # the second: no usage chunk, no tokens
                doc = {**body, "stream_options": opts} if opts else body
                url = f"http://127.0.0.1:{mc.port}/v1/completions"
                async with s.post(url, data=orjson.dumps(doc)) as r:
                    assert r.status == 200
                    await r.read()
        await eventually(lambda: mc.inflight == 0, "the global gateway's streams ended")
        assert request_stats(mc.metrics.registry) == {
            ("inference_objective_request_total", "m", "m"): 2,
            ("inference_objective_request_duration_seconds_count", "m", "m"): 2,
            ("inference_objective_input_tokens_count", "m", "m"): 1,
            ("inference_objective_input_tokens_sum", "m", "m"): 7,
            ("inference_objective_output_tokens_count", "m", "m"): 1,
            ("inference_objective_output_tokens_sum", "m", "m"): 5,
        }
    finally:
        await mc.stop()
        await backend.stop()


def test_a_held_bodys_bytes_come_back_and_the_budget_bounds_them() -> None:
    from kvgate.httpfront.budget import ByteBudget
    from kvgate.multicluster.serve import _UsageSeen

    body = orjson.dumps({"choices": [{"text": "ab"}], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
    budget = ByteBudget(len(body))
    seen = _UsageSeen(budget)
    seen.start(None)
    seen.feed(body[:10])
    seen.feed(body[10:])
    seen.complete = True
    assert budget.used == len(body)
    usage = seen.usage()
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 2)
    assert budget.used == 0
    budget.take(1)  # one byte short: the body is not held, its usage not read, nothing kept taken
    seen = _UsageSeen(budget)
    seen.start(None)
    seen.feed(body[:10])
    seen.feed(body[10:])
    seen.complete = True
    assert seen.usage() is None and budget.used == 1
    seen = _UsageSeen(ByteBudget(1 << 20))  # its client left: the bytes back, no usage
    seen.start(None)
    seen.feed(body)
    assert seen.usage() is None


async def _one_stream(handler: object) -> tuple[bytes, dict[tuple[str, str, str], float]]:
    runner, port = await serve_handler(handler)
    mc = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=f"127.0.0.1:{port}"),)), "round-robin",
                       fetch=False, seed=1)  # fmt: skip
    await mc.start("127.0.0.1", 0)
    try:
        body = {"model": "m", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
        url = f"http://127.0.0.1:{mc.port}/v1/completions"
        async with aiohttp.ClientSession() as s, s.post(url, data=orjson.dumps(body)) as r:
            assert r.status == 200
            text = await r.read()
        await eventually(lambda: mc.inflight == 0, "the global gateway's stream ended")
        return text, request_stats(mc.metrics.registry)
    finally:
        await mc.stop()
        await runner.cleanup()


async def test_a_cut_streams_usage_is_not_observed() -> None:
    """rev-metrics L1: a stream the cluster cut (after its usage event, before ``[DONE]``) gives no
    tokens, as documented and as ``kvgate serve`` (before: 7/2 observed)."""
    text, stats = await _one_stream(cut_after_usage)
    assert b"cut the stream" in text
    assert stats == {
        ("inference_objective_request_total", "m", "m"): 1,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 1,
    }


def test_an_event_stream_is_known_whatever_its_content_type_headers_case() -> None:
    """rev-metrics N2: the relay's headers are a plain dict in the cluster's casing (aiohttp's pure-Python
    parser keeps ``CONTENT-TYPE``; an EPP's header mutation names its own): a stream is still a stream
    (its tail read for usage), not a JSON body held up to 16 MiB whose usage is lost."""
    from kvgate.multicluster.serve import _event_stream

    for name in ("Content-Type", "content-type", "CONTENT-TYPE", "Content-type"):
        assert _event_stream({name: "text/event-stream; charset=utf-8", "X-A": "b"}), name
        assert not _event_stream({name: "application/json"}), name
    assert _event_stream({"content-type": "Text/Event-Stream"})
    assert not _event_stream({"x-content-type": "text/event-stream"})
    assert not _event_stream({})


async def test_a_streams_usage_has_one_reader(monkeypatch) -> None:
    """The router's tail is the stream's only usage reader: the gateway's token metrics and the
    cluster's hit or miss classification both read it (``Routed.usage``). Before, the router scanned
    the stream with an ``SSEScanner`` (for the classification) and the gateway kept a ``UsageTail`` of
    the same bytes (for the metrics): two readers of each chunk."""
    from kvgate.openai.sse import SSEScanner
    from kvgate.openai.usage import UsageTail

    fed: dict[str, int] = {"tail": 0, "scanner": 0}
    tail_feed, scanner_feed = UsageTail.feed, SSEScanner.feed

    def count_tail(self: UsageTail, chunk: bytes) -> None:
        fed["tail"] += 1
        tail_feed(self, chunk)

    def count_scanner(self: SSEScanner, chunk: bytes) -> bytes:
        fed["scanner"] += 1
        return scanner_feed(self, chunk)

    monkeypatch.setattr(UsageTail, "feed", count_tail)
    monkeypatch.setattr(SSEScanner, "feed", count_scanner)
    backend = await Backend("b0", tokens=5).start()
    mc = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin",
                       fetch=False, seed=1)  # fmt: skip
    await mc.start("127.0.0.1", 0)
    chunks = 0
    try:
        body = {"model": "m", "prompt": "x", "max_tokens": 5, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{mc.port}/v1/completions"
            async with s.post(url, data=orjson.dumps(body)) as r:
                assert r.status == 200
                async for _ in r.content.iter_any():
                    chunks += 1
        await eventually(lambda: mc.inflight == 0, "the global gateway's stream ended")
    finally:
        await mc.stop()
        await backend.stop()
    assert chunks and fed["scanner"] == 0 and fed["tail"] >= 1, fed  # was: both, each chunk
    stats = request_stats(mc.metrics.registry)
    assert stats[("inference_objective_output_tokens_sum", "m", "m")] == 5
    assert stats[("inference_objective_input_tokens_sum", "m", "m")] == 7
