"""llm-d's ``llm_d_epp_request_streaming_itl_seconds`` (labels ``model_name``, ``target_model_name``,
``fairness_id``, ``priority``; buckets 1 ms .. 2 s; llm-d-router ``pkg/epp/metrics``): the gaps between a
stream's consecutive response body chunks, in the three doors and merged across ``kvgate serve --workers
2``, scraped over HTTP after known requests. The backend writes its 4 tokens 0.15 s apart, then its usage
and ``[DONE]``: the gaps sum to the time from the first chunk to the last (about 0.6 s, however the reads
group the writes), each gap one observation; a non-streamed answer has none. Fails before: no such family
(closing-s19 "Noticed and left undone")."""

from __future__ import annotations

import contextlib

import aiohttp
import orjson

from extproc.test_llmd_request_families import (
    DEFAULT,
    M,
    Samples,
    _post,
    get,
    les,
    scrape,
    total,
    workers_2_scrape,
)
from flowcontrol.test_doors import eventually
from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway
from kvgate.extproc.testing import EnvoyHarness
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

ITL = "llm_d_epp_request_streaming_itl_seconds"
DELAY = 0.15  # between the backend's token chunks
DOC = {"model": "m", "prompt": "hello", "max_tokens": 4}
STREAM = {**DOC, "stream": True, "stream_options": {"include_usage": True}}


def _check_itl(s: Samples, flow: dict[str, str]) -> None:
    gaps = get(s, ITL + "_count", **flow)
    spread = get(s, ITL + "_sum", **flow)
    duration = get(s, "llm_d_epp_request_duration_seconds_sum", **flow)
    # One stream: at least one gap (3 token gaps of 0.15 s, unless reads merged them), their sum the time
    # from its first chunk to its last (>= 0.45 s after the first write, less what the first read lagged).
    assert 1 <= gaps <= 6, gaps
    assert 2 * DELAY <= spread <= duration, (spread, duration)
    assert les(s, ITL) == {
        "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.15", "0.2", "0.3", "0.5", "0.75",
        "1.0", "2.0", "+Inf",
    }  # fmt: skip


async def test_serve_observes_a_stream_s_chunk_gaps() -> None:
    backend = await Backend("b0", tokens=4, chunk_delay=DELAY).start()
    try:
        async with running_gateway(make_config([backend.address])) as gw:
            url = base_url(gw) + "/v1/completions"
            assert (await _post(url, STREAM))[0] == 200
            assert (await _post(url, {**DOC, "prompt": "whole"}))[0] == 200
            s = await scrape(base_url(gw) + "/metrics")
    finally:
        await backend.stop()
    assert get(s, "llm_d_epp_request_total", **DEFAULT) == 2
    _check_itl(s, DEFAULT)
    assert total(s, ITL + "_count") == get(s, ITL + "_count", **DEFAULT)  # (the non-streamed one: none)


async def test_epp_observes_a_stream_s_chunk_gaps(start_epp) -> None:
    backend = await Backend("b0", tokens=4, chunk_delay=DELAY).start()
    try:
        epp = await start_epp([backend.address])
        async with aiohttp.ClientSession() as http:
            harness = EnvoyHarness(epp.stub, http)
            streamed = await harness.request("POST", "/v1/completions", orjson.dumps(STREAM), {})
            whole = await harness.request("POST", "/v1/completions", orjson.dumps(DOC), {})
            assert streamed.status == whole.status == 200
        stats = epp.metrics.requests
        await eventually(lambda: sum(c.count for c in stats.children.values()) == 2, "both requests ended")
        s = await scrape(f"http://127.0.0.1:{epp.server.metrics_port}/metrics")
    finally:
        await backend.stop()
    _check_itl(s, DEFAULT)
    assert total(s, ITL + "_count") == get(s, ITL + "_count", **DEFAULT)


async def test_clusters_observes_a_stream_s_chunk_gaps() -> None:
    backend = await Backend("b0", tokens=4, chunk_delay=DELAY).start()
    mc = GlobalGateway(
        ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin", fetch=False, seed=1
    )
    await mc.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{mc.port}"
    try:
        assert (await _post(url + "/v1/completions", DOC))[0] == 200  # (its 2xx earns ``m`` its label)
        assert (await _post(url + "/v1/completions", STREAM))[0] == 200
        await eventually(lambda: mc.inflight == 0, "the requests ended")
        s = await scrape(url + "/metrics")
    finally:
        with contextlib.suppress(Exception):
            await mc.stop()
        await backend.stop()
    flow = {**M, "fairness_id": "default-flow", "priority": "0"}  # (no objective read: the unset 0)
    _check_itl(s, flow)
    assert total(s, ITL + "_count") == get(s, ITL + "_count", **flow)


async def test_workers_2_merge_the_chunk_gaps(tmp_path) -> None:
    """``kvgate serve --workers 2``: each worker's series under its ``worker`` label; summed over it, the
    streams' gaps (4 streams on fresh connections, spread over the workers by the kernel)."""
    m = await workers_2_scrape(tmp_path, Backend("b0", tokens=4, chunk_delay=DELAY), orjson.dumps(STREAM), 4)
    workers = {dict(ls).get("worker") for (n, ls) in m if n == ITL + "_count"}
    assert workers and None not in workers
    assert 4 <= total(m, ITL + "_count", **DEFAULT) <= 24
    assert total(m, ITL + "_sum", **DEFAULT) >= 4 * 2 * DELAY
    assert total(m, "llm_d_epp_request_total", **DEFAULT) == 4
