"""``kvgate serve --clusters``' bounded model labels (``kvgate.openai.labels``): a name a cluster answers
with a 2xx is learnt only if a cluster's aggregate lists it (``PoolAggregate.models``: the names its
front door's config serves and its servers report). Before, a cluster whose servers answer any
``model`` (kvgate's simulator, SGLang) let a client fill the 16 learnt labels with made-up names, and a
real model first served afterwards stayed ``other`` until a restart."""

from __future__ import annotations

import time

import aiohttp
import orjson

from extproc.test_error_counts import request_stats
from flowcontrol.test_doors import eventually
from gateway.backend import Backend
from kvgate.datalayer.aggregate import PoolAggregate, aggregate
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.mappings import extract
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from kvgate.openai.labels import MAX_MODEL_LABELS


async def test_made_up_names_a_cluster_answers_do_not_take_the_labels() -> None:
    backend = await Backend("b0", tokens=2).start()  # answers any ``model`` with a 200
    mc = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin",
                       fetch=False, seed=1)  # fmt: skip
    agg = PoolAggregate("p", time.time(), 1, 1, capacity=1.0, headroom=1.0, models=("m",))
    mc.router.states["c"].set_aggregate(agg, time.monotonic())
    await mc.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{mc.port}/v1/completions"
            for model in [f"junk-{i}" for i in range(MAX_MODEL_LABELS)] + ["m"]:
                body = orjson.dumps({"model": model, "prompt": "x", "max_tokens": 2})
                async with s.post(url, data=body) as r:
                    assert r.status == 200
                    await r.read()
        await eventually(lambda: mc.inflight == 0, "the global gateway's requests ended")
    finally:
        await mc.stop()
        await backend.stop()
    assert mc.metrics.models.learnt == {"m"}  # was: junk-0 .. junk-15, and "m" under ``other``
    stats = request_stats(mc.metrics.registry)
    assert stats[("inference_objective_request_total", "m", "m")] == 1
    assert stats[("inference_objective_request_total", "other", "other")] == MAX_MODEL_LABELS


def test_a_pools_aggregate_lists_its_config_and_reported_models() -> None:
    ep = Endpoint(address="10.0.0.9:8000")
    page = (
        'vllm:num_requests_waiting{model_name="served"} 0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="ad",waiting_lora_adapters="wait"} 1\n'
    )
    ep.metrics = extract(page, "vllm", now=1.0)
    agg = aggregate("p", [ep], now=1.0, wall=1.0, models=["public", "*", "", "x" * 257])
    assert agg.models == ("ad", "public", "served", "wait")  # (no wildcard, no empty or over-long name)
    many = aggregate("p", [ep], now=1.0, wall=1.0, models=[f"m{i:03}" for i in range(100)])
    assert len(many.models) == 64


async def test_kvgate_serves_aggregate_lists_the_names_it_serves() -> None:
    """``kvgate serve``'s ``/v1/pool/aggregate`` lists the pool's models and adapters and the rewrite
    rules' names sent there, the names its clients send (its pods may report other ones)."""
    from gateway.conftest import base_url, make_config, running_gateway

    backend = await Backend("b0").start()
    rules = [{"matches": [{"model": {"value": "alias"}}], "targets": [{"modelRewrite": "m", "weight": 1}]}]
    cfg = make_config([backend.address], adapters=("m-lora",), extra={"rewrites": rules})
    try:
        async with (
            running_gateway(cfg) as gw,
            aiohttp.ClientSession() as s,
            s.get(base_url(gw) + "/v1/pool/aggregate?pool=p") as r,
        ):
            assert r.status == 200
            doc = orjson.loads(await r.read())
    finally:
        await backend.stop()
    assert {"alias", "m", "m-lora"} <= set(doc["models"]), doc
