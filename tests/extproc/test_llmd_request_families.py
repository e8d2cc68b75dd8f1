"""llm-d's per-request families (``llm_d_epp_request_*``: labels ``model_name``, ``target_model_name``,
``fairness_id``, ``priority``; TTFT with ``streaming`` too), the response sizes of every answer ``kvgate
serve`` relays (a stream's and a big answer's bytes as the client got them, not only an answer held
whole) and ``kvgate serve --clusters``' running count and sizes: scraped over HTTP from each door's
``/metrics`` (the EPP's metrics port), checked against known requests; ``--workers 2`` sums them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from flowcontrol.test_doors import HeldBackend, eventually
from gateway.backend import Backend, free_port
from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serve_handler
from gateway.test_workers_start import _config, _serve, _until_ready
from kvgate.extproc.testing import EnvoyHarness
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from kvgate.openai.labels import FairnessLabels
from kvgate.openai.requeststats import NO_FIRST_BYTE, RequestEnd, RequestStats
from kvgate.scheduling.types import Usage

M = {"model_name": "m", "target_model_name": "m"}
DEFAULT = {**M, "fairness_id": "default-flow", "priority": "0"}
FAIRNESS = "x-gateway-inference-fairness-id"
OBJECTIVE = "x-gateway-inference-objective"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """Every sample of ``url``'s exposition, by (sample name, labels)."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        text = await r.text()
    return {
        (x.name, frozenset(x.labels.items())): x.value
        for f in text_string_to_metric_families(text)
        for x in f.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def les(samples: Samples, family: str) -> set[str]:
    return {dict(ls)["le"] for (n, ls) in samples if n == f"{family}_bucket"}


async def _post(url: str, doc: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, data=orjson.dumps(doc), headers=headers) as r:
        return r.status, await r.read()


@contextlib.asynccontextmanager
async def split_json_backend() -> AsyncIterator[str]:
    """A model server whose JSON answer comes in two writes 50 ms apart (not all there at the head: a
    gateway with a small ``whole_max`` relays it as it arrives); its address."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        out = orjson.dumps({
            "id": "x", "object": "text_completion", "model": body["model"],
            "choices": [{"index": 0, "text": "y" * 500, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        })  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(out[:200])
        await asyncio.sleep(0.05)
        await resp.write(out[200:])
        await resp.write_eof()
        return resp

    runner, port = await serve_handler(answer, shutdown_timeout=0.2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_serve_observes_the_bytes_a_stream_and_a_big_relayed_answer_sent() -> None:
    """A stream (the usage chunk the gateway asked for is stripped: not the client's bytes), an answer
    held whole, and a non-streamed answer past ``whole_max`` (relayed as it arrives): each answer's size
    is the body bytes its client got, in the reference's family and llm-d's twin. Fails before: only
    the answer held whole was observed (count 1, then 0)."""
    backend = await Backend("b0", tokens=4, piece_bytes=40).start()
    try:
        async with running_gateway(make_config([backend.address])) as gw:
            url = base_url(gw) + "/v1/completions"
            doc = {"model": "m", "prompt": "hello", "max_tokens": 4}
            status, streamed = await _post(url, {**doc, "stream": True})
            assert status == 200 and streamed.endswith(b"data: [DONE]\n\n") and b"usage" not in streamed
            status, whole = await _post(url, doc)
            assert status == 200
            s = await scrape(base_url(gw) + "/metrics")
    finally:
        await backend.stop()
    sizes = len(streamed) + len(whole)
    assert get(s, "inference_objective_response_sizes_count", **M) == 2
    assert get(s, "inference_objective_response_sizes_sum", **M) == sizes
    assert get(s, "llm_d_epp_response_size_bytes_count", **DEFAULT) == 2
    assert get(s, "llm_d_epp_response_size_bytes_sum", **DEFAULT) == sizes
    async with split_json_backend() as address, running_gateway(make_config([address])) as gw:
        assert gw.proxy is not None
        gw.proxy.whole_max = 64  # (its first 200 bytes are past it: relayed, not held)
        status, relayed = await _post(base_url(gw) + "/v1/completions", {**doc, "max_tokens": 2})
        assert status == 200 and orjson.loads(relayed)["usage"]["completion_tokens"] == 2
        s = await scrape(base_url(gw) + "/metrics")
    assert get(s, "inference_objective_response_sizes_count", **M) == 1
    assert get(s, "inference_objective_response_sizes_sum", **M) == len(relayed)
    assert get(s, "llm_d_epp_response_size_bytes_sum", **DEFAULT) == len(relayed)


async def test_serve_exports_llm_d_s_request_families_by_flow() -> None:
    """32 non-streamed requests of tenant ``t`` under the objective ``critical`` (priority 10), one
    stream of the default flow and one 400: llm-d's families by model, fairness id and priority. The
    tenant's first 31 are ``other`` (a fairness id earns its label at its 32nd request, flow control's
    sticky rule), its 32nd is ``t``; the reference's families are their sums. TTFT: a non-streamed
    answer's is its duration (``streaming="false"``), a stream's its first byte; TPOT a stream's only.
    Fails before: no ``llm_d_epp_request_*`` family."""
    backend = await Backend("b0", tokens=4).start()
    cfg = make_config([backend.address], extra={"objectives": [{"name": "critical", "priority": 10}]})
    try:
        async with running_gateway(cfg) as gw:
            url = base_url(gw) + "/v1/completions"
            doc = {"model": "m", "prompt": "hello", "max_tokens": 2}
            tenant = {FAIRNESS: "t", OBJECTIVE: "critical"}
            bodies = [await _post(url, doc, tenant) for _ in range(32)]
            assert {status for status, _ in bodies} == {200}
            stream = {**doc, "max_tokens": 4, "stream": True}
            assert (await _post(url, stream))[0] == 200
            backend.mode = "error400"
            assert (await _post(url, doc, tenant))[0] == 400
            s = await scrape(base_url(gw) + "/metrics")
    finally:
        await backend.stop()
    other = {**M, "fairness_id": "other", "priority": "10"}
    t = {**M, "fairness_id": "t", "priority": "10"}
    assert get(s, "llm_d_epp_request_total", **other) == 31
    assert get(s, "llm_d_epp_request_total", **t) == 2  # (its 32nd and the 400)
    assert get(s, "llm_d_epp_request_total", **DEFAULT) == 1
    # (upstream's newer label set: + ``priority``)
    assert get(s, "inference_objective_request_total", **M, priority="10") == 33
    assert get(s, "inference_objective_request_total", **M, priority="0") == 1
    assert get(s, "llm_d_epp_request_error_total", **t, error_code="400") == 1
    assert total(s, "llm_d_epp_request_error_total") == 1
    assert get(s, "inference_objective_request_error_total", **M, error_code="400") == 1
    size = len(orjson.dumps(doc))
    assert get(s, "llm_d_epp_request_size_bytes_sum", **other) == 31 * size
    assert get(s, "llm_d_epp_request_output_tokens_sum", **other) == 31 * 2
    assert get(s, "llm_d_epp_request_input_tokens_sum", **DEFAULT) == 7
    assert get(s, "llm_d_epp_request_running", **other) == get(s, "llm_d_epp_request_running", **DEFAULT) == 0
    # TTFT: a non-streamed answer's is its duration; the stream's is its first byte, before its end.
    whole = get(s, "llm_d_epp_request_ttft_seconds_sum", **other, streaming="false")
    assert get(s, "llm_d_epp_request_ttft_seconds_count", **other, streaming="false") == 31
    assert whole == get(s, "llm_d_epp_request_duration_seconds_sum", **other) > 0
    assert get(s, "llm_d_epp_request_ttft_seconds_count", **DEFAULT, streaming="true") == 1
    ttft = get(s, "llm_d_epp_request_ttft_seconds_sum", **DEFAULT, streaming="true")
    duration = get(s, "llm_d_epp_request_duration_seconds_sum", **DEFAULT)
    assert 0 < ttft <= duration
    # TPOT: (duration - TTFT) / (4 tokens - 1), the stream's only.
    assert get(s, "llm_d_epp_request_streaming_tpot_seconds_count", **DEFAULT) == 1
    tpot = get(s, "llm_d_epp_request_streaming_tpot_seconds_sum", **DEFAULT)
    assert abs(tpot - (duration - ttft) / 3) < 1e-9
    assert total(s, "llm_d_epp_request_streaming_tpot_seconds_count") == 1
    # NTPOT: duration over output tokens.
    assert abs(get(s, "llm_d_epp_request_ntpot_seconds_sum", **DEFAULT) - duration / 4) < 1e-9
    # Buckets: llm-d's token and response ladders spell 32778 as the reference's (upstream
    # llm_d_router_metrics.go), only request sizes 32768; output tokens stop at 8192.
    for family in (
        "llm_d_epp_response_size_bytes",
        "inference_objective_response_sizes",
        "llm_d_epp_request_input_tokens",
        "llm_d_epp_request_cached_tokens",
    ):
        assert "32778.0" in les(s, family) and "32768.0" not in les(s, family), family
    assert "32768.0" in les(s, "llm_d_epp_request_size_bytes")
    assert "32778.0" not in les(s, "llm_d_epp_request_size_bytes")
    assert max(float(b) for b in les(s, "inference_objective_output_tokens") - {"+Inf"}) == 8192
    assert max(float(b) for b in les(s, "llm_d_epp_request_ttft_seconds") - {"+Inf"}) == 120


async def test_serve_s_running_count_carries_the_flow_labels() -> None:
    backend = await HeldBackend().start()
    try:
        async with running_gateway(make_config([backend.address])) as gw:
            sent = asyncio.ensure_future(
                _post(base_url(gw) + "/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 1})
            )
            await eventually(lambda: len(backend.arrivals) == 1, "the request upstream")
            held = await scrape(base_url(gw) + "/metrics")
            backend.release.release()
            assert (await sent)[0] == 200
            after = await scrape(base_url(gw) + "/metrics")
    finally:
        await backend.stop()
    assert get(held, "llm_d_epp_request_running", **DEFAULT) == 1  # fails before: no such family
    assert get(held, "inference_objective_running_requests", model_name="m") == 1
    assert get(after, "llm_d_epp_request_running", **DEFAULT) == 0


async def test_epp_exports_llm_d_s_request_families_on_its_metrics_port(start_epp) -> None:
    """Through ``kvgate epp`` (Envoy's side played by ``EnvoyHarness``): a stream that asked for its
    usage (tenant ``t``, objective ``critical``: fairness ``other`` before its label, priority 10) and a
    non-streamed answer of the default flow. Fails before: no ``llm_d_epp_request_*`` family."""
    backend = await Backend("b0", tokens=4).start()
    try:
        epp = await start_epp([backend.address], objectives={"critical": 10})
        async with aiohttp.ClientSession() as http:
            harness = EnvoyHarness(epp.stub, http)
            doc = {"model": "m", "prompt": "hello", "max_tokens": 4}
            streamed = await harness.request(
                "POST",
                "/v1/completions",
                orjson.dumps({**doc, "stream": True, "stream_options": {"include_usage": True}}),
                {FAIRNESS: "t", OBJECTIVE: "critical"},
            )
            whole = await harness.request("POST", "/v1/completions", orjson.dumps(doc), {})
            assert streamed.status == whole.status == 200
        url = f"http://127.0.0.1:{epp.server.metrics_port}/metrics"
        stats = epp.metrics.requests
        await eventually(lambda: stats.children and not any(stats.running.values()), "both requests ended")
        s = await scrape(url)
    finally:
        await backend.stop()
    other = {**M, "fairness_id": "other", "priority": "10"}
    assert get(s, "llm_d_epp_request_total", **other) == get(s, "llm_d_epp_request_total", **DEFAULT) == 1
    assert get(s, "llm_d_epp_request_ttft_seconds_count", **other, streaming="true") == 1
    assert get(s, "llm_d_epp_request_ttft_seconds_count", **DEFAULT, streaming="false") == 1
    ttft = get(s, "llm_d_epp_request_ttft_seconds_sum", **other, streaming="true")
    duration = get(s, "llm_d_epp_request_duration_seconds_sum", **other)
    assert 0 < ttft <= duration
    tpot = get(s, "llm_d_epp_request_streaming_tpot_seconds_sum", **other)
    assert get(s, "llm_d_epp_request_streaming_tpot_seconds_count", **other) == 1
    assert abs(tpot - (duration - ttft) / 3) < 1e-9
    assert get(s, "llm_d_epp_request_output_tokens_sum", **other) == 4
    # Response sizes: the model server's bytes, as Envoy sent them (nothing rewritten here).
    assert get(s, "llm_d_epp_response_size_bytes_sum", **other) == len(streamed.body)
    assert get(s, "llm_d_epp_response_size_bytes_sum", **DEFAULT) == len(whole.body)
    assert get(s, "llm_d_epp_request_size_bytes_count", **DEFAULT) == 1
    assert get(s, "llm_d_epp_request_running", **other) == 0


async def test_clusters_counts_running_requests_and_sizes() -> None:
    """``kvgate serve --clusters``: a request in flight is in both running families, and each request's
    body size and the bytes its client got are observed, as in the other doors. Fails before: no
    running series, no sizes (count 0)."""
    backend = await HeldBackend().start()
    mc = GlobalGateway(
        ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin", fetch=False, seed=1
    )
    await mc.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{mc.port}"
    doc = {"model": "m", "prompt": "x" * 300, "max_tokens": 1}
    try:
        backend.release.release()  # (the first answered at once: its 2xx earns ``m`` its label)
        status, first = await _post(url + "/v1/completions", doc)
        assert status == 200
        sent = asyncio.ensure_future(_post(url + "/v1/completions", doc))
        await eventually(lambda: len(backend.arrivals) == 2, "the second request upstream")
        held = await scrape(url + "/metrics")
        backend.release.release()
        status, second = await sent
        assert status == 200
        await eventually(lambda: mc.inflight == 0, "the request ended")
        after = await scrape(url + "/metrics")
    finally:
        with contextlib.suppress(Exception):
            await mc.stop()
        await backend.stop()
    flow = {**M, "fairness_id": "default-flow", "priority": "0"}  # (no objective read: the unset 0)
    assert get(held, "inference_objective_running_requests", model_name="m") == 1
    assert get(held, "llm_d_epp_request_running", **flow) == 1
    assert get(after, "inference_objective_running_requests", model_name="m") == 0
    size = len(orjson.dumps(doc))
    assert get(after, "inference_objective_request_sizes_count", **M) == 2
    assert get(after, "inference_objective_request_sizes_sum", **M) == 2 * size
    assert get(after, "inference_objective_response_sizes_count", **M) == 2
    assert get(after, "inference_objective_response_sizes_sum", **M) == len(first) + len(second)
    assert get(after, "llm_d_epp_response_size_bytes_sum", **flow) == len(first) + len(second)
    assert get(after, "llm_d_epp_request_ttft_seconds_count", **flow, streaming="false") == 2


async def workers_2_scrape(tmp_path: Path, backend: Backend, body: bytes, n: int) -> Samples:
    """``kvgate serve --workers 2`` in front of ``backend``: ``n`` posts of ``body`` on fresh connections
    (spread over the workers by the kernel), each a 200, then the admin port's ``/metrics``."""
    b = await backend.start()
    port, admin = free_port(), free_port()
    _config(tmp_path / "gw.yaml", b.address, port, admin, None)
    try:
        async with _serve(tmp_path / "gw.yaml", tmp_path / "stderr"), aiohttp.ClientSession() as s:
            await _until_ready(s, admin)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as c:
                for _ in range(n):
                    async with c.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                        assert r.status == 200
                        await r.read()
            return await scrape(f"http://127.0.0.1:{admin}/metrics")
    finally:
        await b.stop()


async def test_workers_2_merge_sums_llm_d_s_families(tmp_path) -> None:
    """``kvgate serve --workers 2``: the admin port's ``/metrics`` carries each worker's series under its
    ``worker`` label; summed over ``worker`` they are the gateway's requests (20 sent on fresh
    connections, spread over the workers by the kernel)."""
    doc = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 2})
    m = await workers_2_scrape(tmp_path, Backend("b0"), doc, 20)
    workers = {dict(ls).get("worker") for (n, ls) in m if n == "llm_d_epp_request_total"}
    assert workers and None not in workers
    assert total(m, "llm_d_epp_request_total", **DEFAULT) == 20
    assert total(m, "inference_objective_request_total", **M) == 20
    assert total(m, "llm_d_epp_request_ttft_seconds_count", **DEFAULT, streaming="false") == 20
    assert total(m, "llm_d_epp_request_size_bytes_sum", **DEFAULT) == 20 * len(doc)
    assert total(m, "llm_d_epp_request_output_tokens_sum", **DEFAULT) == 20 * 2
    assert total(m, "llm_d_epp_request_running", **DEFAULT) == 0
    responses = total(m, "llm_d_epp_response_size_bytes_sum", **DEFAULT)
    assert responses == total(m, "inference_objective_response_sizes_sum", **M) > 0


def test_fairness_labels_are_sticky_and_bounded() -> None:
    """An id's label at its 32nd request, never taken back; a spray of ids each seen fewer times gets
    none; at most 16 ids besides ``default-flow`` (always its own); ``other`` itself is never an id's."""
    labels = FairnessLabels()
    assert labels.label("default-flow") == "default-flow"
    for i in range(1000):  # a spray: 1000 ids, 20 requests each, interleaved
        for j in range(20):
            labels.count(f"spray-{(i + j) % 1000}")
    assert labels.labelled == {"default-flow"}
    for n in range(1, 33):
        labels.count("t")
        assert labels.label("t") == ("t" if n >= 32 else "other")
    for i in range(40):
        for _ in range(32):
            labels.count(f"u{i}")
        labels.count("other")
    assert len(labels.labelled) == 17 and "other" not in labels.labelled and "t" in labels.labelled
    assert labels.label("u39") == "other"


def test_a_stream_whose_first_byte_was_not_seen_has_no_ttft() -> None:
    """As the reference's (no first-token time, no TTFT): ``kvgate epp`` sent no response bodies
    (``response_body_mode: NONE``), ``--clusters`` a stream cut before its first byte went out. A
    non-streamed answer's TTFT is its duration; a stream's TPOT needs its first byte."""
    stats = RequestStats()
    usage = Usage(prompt_tokens=3, completion_tokens=4)
    stats.observe(RequestEnd("m", "m", 1.0, usage, first=NO_FIRST_BYTE))
    stats.observe(RequestEnd("m", "m", 2.0, usage))
    stats.observe(RequestEnd("m", "m", 3.0, usage, first=0.5))
    (child,) = stats.children.values()
    assert (sum(child.ttft.counts), child.ttft.sum) == (1, 2.0)
    assert (sum(child.ttft_stream.counts), child.ttft_stream.sum) == (1, 0.5)
    assert (sum(child.tpot.counts), child.tpot.sum) == (1, (3.0 - 0.5) / 3)
    assert child.count == 3


async def test_llm_d_s_fairness_header_is_the_flow_in_the_three_doors(start_epp) -> None:
    """A request naming its flow only in llm-d's header (``x-llm-d-inference-fairness-id``) is that
    flow's, as flow control reads it (``flow_of``): not yet labelled, so ``other``, never
    ``default-flow``. Fails before: counted as ``default-flow`` in the three doors."""
    backend = await Backend("b0", tokens=2).start()
    doc = {"model": "m", "prompt": "hello", "max_tokens": 2}
    llmd = {"x-llm-d-inference-fairness-id": "t"}
    other = {**M, "fairness_id": "other"}
    try:
        async with running_gateway(make_config([backend.address])) as gw:
            assert (await _post(base_url(gw) + "/v1/completions", doc, llmd))[0] == 200
            serve = await scrape(base_url(gw) + "/metrics")
        epp = await start_epp([backend.address])
        async with aiohttp.ClientSession() as http:
            res = await EnvoyHarness(epp.stub, http).request(
                "POST", "/v1/completions", orjson.dumps(doc), llmd
            )
            assert res.status == 200
        stats = epp.metrics.requests
        await eventually(lambda: stats.children and not any(stats.running.values()), "the request ended")
        at_epp = await scrape(f"http://127.0.0.1:{epp.server.metrics_port}/metrics")
        mc = GlobalGateway(
            ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin", fetch=False, seed=1
        )
        await mc.start("127.0.0.1", 0)
        try:
            assert (await _post(f"http://127.0.0.1:{mc.port}/v1/completions", doc, llmd))[0] == 200
            await eventually(lambda: mc.inflight == 0, "the request ended")
            clusters = await scrape(f"http://127.0.0.1:{mc.port}/metrics")
        finally:
            await mc.stop()
    finally:
        await backend.stop()
    assert get(serve, "llm_d_epp_request_total", **other, priority="0") == 1
    assert get(at_epp, "llm_d_epp_request_total", **other, priority="0") == 1
    # (the --clusters door labels its models once a cluster answered them: this first one is ``other``)
    assert total(clusters, "llm_d_epp_request_total", fairness_id="other", priority="0") == 1
    assert total(clusters, "llm_d_epp_request_total", fairness_id="default-flow") == 0
