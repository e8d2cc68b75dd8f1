"""qa31 Q2: ``kvgate serve --pool-name``: when the pool's last endpoint leaves (its pod turns NotReady, or
the InferencePool is deleted), ``inference_pool_average_queue_size`` and
``inference_pool_average_kv_cache_utilization`` keep their last values and
``inference_pool_per_pod_queue_size{model_server_pod=<the gone pod>}`` stays, for good, while
``inference_pool_ready_pods`` and llm-d's twins (``llm_d_epp_average_queue_size``) say 0.

``Director.update_pool_metrics`` (src/kvgate/requestcontrol/director.py:901-925) sets the averages only for
a pool with ready endpoints, and drops the per-pod series of a pool with no endpoint only when called with
``pool=None``; ``GatewayServer._metrics`` (src/kvgate/gateway/server.py:246) calls it with the pool's
name, and the pick path (which calls it with None) never runs for an empty pool. GIE's HPA guidance
autoscales on these two averages: a pool whose pods all went NotReady reads "queue 6" for ever. Fails on
main 691110b3."""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiohttp
import pytest

from k8s.pool_scope_kit import add_pod, pool_obj, until
from k8s.pool_scope_kit import chat_status as chat
from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s.apiserver import ApiServerDouble

sim = pytest.importorskip("kvgate.sim.server")
POOL = "qa31q2"


def _value(text: str, metric: str, *labels: str) -> float | None:
    """The sample of ``metric`` whose labels include every one of ``labels`` (``k="v"``), or None."""
    for m in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.M):
        if all(lab in m.group(1).split(",") for lab in labels):
            return float(m.group(2))
    return None


async def test_the_pool_gauges_do_not_keep_a_gone_pods_queue() -> None:
    rep = sim.Replica(sim.ReplicaConfig(model="sim-model", time_scale=1.0, max_num_seqs=2, seed=3), index=0)
    await rep.start()
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool_obj(POOL, ports=(rep.port,)))
        add_pod(d, "p0", "127.0.0.1")
        flags = ["--pool-name", POOL, "--model", "sim-model", "--kube-server", d.url, "--host", "127.0.0.1",
                 "--port", "0", "--policy", "round-robin"]  # fmt: skip
        cfg = build_config(_parser().parse_args(flags))
        gw = GatewayServer(cfg, build_pools(cfg), scrape=True)
        await gw.start()
        url = f"http://127.0.0.1:{gw.port}"
        texts: list[str] = []
        load: list[asyncio.Task[int]] = []
        try:
            async with aiohttp.ClientSession() as http:

                async def scrape() -> str:
                    async with http.get(f"{url}/metrics") as r:
                        texts.append(await r.text())
                        return texts[-1]

                await until(lambda: len(gw.pools[0].store) == 1, what="the pod's endpoint")
                # Long generations on a 2-sequence engine: a queue the gateway scrapes.
                load = [asyncio.create_task(chat(http, url, "sim-model", max_tokens=3000)) for _ in range(8)]
                queued = f'name="{POOL}"'
                for _ in range(450):
                    q = _value(await scrape(), "inference_pool_average_queue_size", queued)
                    if q:
                        break
                    await asyncio.sleep(0.1)
                assert q, "no queue seen (setup)"
                pod_q = _value(
                    texts[-1], "inference_pool_per_pod_queue_size", 'model_server_pod="p0-rank-0"', queued
                )
                assert pod_q, "no per-pod series seen (setup)"

                d.set_pod_status("p0", ready=False)  # the pool's only pod leaves the pick set
                await until(lambda: len(gw.pools[0].store) == 0, what="the endpoint removed")
                for _ in range(300):  # (the gauges refresh per scrape; 30 s)
                    text = await scrape()
                    ready = _value(text, "inference_pool_ready_pods", queued)
                    if ready == 0.0:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(2.0)
                text = await scrape()
                assert _value(text, "inference_pool_ready_pods", queued) == 0.0
                assert _value(text, "llm_d_epp_average_queue_size", queued) in (0.0, None)
                assert (
                    _value(text, "inference_pool_per_pod_queue_size", 'model_server_pod="p0-rank-0"', queued)
                    is None
                ), "the gone pod's queue series stays"
                assert _value(text, "inference_pool_average_queue_size", queued) == 0.0, (
                    "the pool's average queue keeps the gone pod's last value"
                )
                assert _value(text, "inference_pool_average_kv_cache_utilization", queued) == 0.0
        finally:
            for t in load:
                t.cancel()
            for t in load:
                with contextlib.suppress(BaseException):
                    await t
            await gw.stop(drain_timeout=1.0)
    await rep.stop()


def test_the_epps_refresh_zeroes_the_averages_of_a_pool_whose_last_endpoint_left() -> None:
    """``kvgate epp``'s path (``_every_second`` calls ``update_pool_metrics()``, no pool): the per-pod series
    goes with the last endpoint, but ``inference_pool_average_queue_size`` / ``..._kv_cache_utilization``
    keep their last values (the pool is not in ``by_pool`` any more). Fails on main 691110b3 (6.0 stays)."""
    import time

    from prometheus_client import REGISTRY

    from kvgate.config.director import build_director
    from kvgate.datalayer.store import EndpointStore, make_endpoint

    pool = "qa31q2epp"

    def value(family: str) -> float | None:
        for f in REGISTRY.collect():
            for s in f.samples:
                if s.name == family and s.labels.get("name") == pool:
                    return float(s.value)
        return None

    store = EndpointStore([make_endpoint("10.1.2.3:8000", pool=pool, name="p0-rank-0")])
    director = build_director("reference", store, clock=time.monotonic, seed=0, pool=pool)
    now = time.monotonic()
    for ep in store.all():
        ep.metrics.waiting_queue_size = 6
        ep.metrics.kv_cache_usage = 0.75
        ep.metrics.updated_at = now
        ep.answered_at = now
    director.update_pool_metrics()  # type: ignore[attr-defined]
    assert value("inference_pool_average_queue_size") == 6.0  # (setup)
    assert value("inference_pool_average_kv_cache_utilization") == 0.75
    store.remove("10.1.2.3:8000")  # the pod left (NotReady, deleted, or the InferencePool deleted)
    director.update_pool_metrics()  # type: ignore[attr-defined]
    assert value("inference_pool_average_queue_size") == 0.0, "the gone pod's queue is still the average"
    assert value("inference_pool_average_kv_cache_utilization") == 0.0
    assert value("inference_pool_ready_pods") == 0.0
    assert value("inference_pool_per_pod_queue_size") is None
