"""``kvgate serve --clusters``' bounded model labels (``kvgate.openai.labels``): the names a cluster's
aggregate lists (``PoolAggregate.models``: the names its front door's config serves and its servers
report) are labels of their own; another name a cluster answers with a 2xx is learnt into the slots they
leave. Before, a cluster whose servers answer any ``model`` (kvgate's simulator, SGLang) let a client
fill the 16 learnt labels with made-up names, and a real model first served afterwards stayed ``other``
until a restart."""

from __future__ import annotations

import time

import aiohttp
import orjson

from extproc.test_error_counts import request_stats
from flowcontrol.test_doors import eventually
from gateway.backend import Backend
from kvgate.datalayer.aggregate import MAX_MODELS, PoolAggregate, aggregate, decode
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.mappings import extract
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from kvgate.multicluster.state import ClusterState, models_listed
from kvgate.openai.labels import MAX_MODEL_LABELS, ModelLabels


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
    # (was: junk-0 .. junk-15, and "m" under ``other``): "m" has its own label, junk the slots left
    assert mc.metrics.models.learnt == {f"junk-{i}" for i in range(MAX_MODEL_LABELS - 1)}
    stats = request_stats(mc.metrics.registry)
    assert stats[("inference_objective_request_total", "m", "m")] == 1
    assert stats[("inference_objective_request_total", "other", "other")] == 1


def test_a_pools_aggregate_lists_its_config_and_reported_models() -> None:
    ep = Endpoint(address="10.0.0.9:8000")
    page = (
        'vllm:num_requests_waiting{model_name="served"} 0\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="ad",waiting_lora_adapters="wait"} 1\n'
    )
    ep.metrics = extract(page, "vllm", now=1.0)
    agg = aggregate("p", [ep], now=1.0, wall=1.0, models=["public", "*", "", "x" * 257])
    # (config names first, then the servers' own, then adapters; no wildcard, no empty or over-long name)
    assert agg.models == ("public", "served", "ad", "wait")
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


def test_the_front_doors_own_model_survives_the_64_name_cut() -> None:
    """Review s14-doors F: the 64 names kept were the first *sorted*, so a pool whose servers run many
    LoRA adapters (vLLM ``--max-loras 8`` on 10 pods) cut its own base model when it sorted late, and a
    global gateway or hub then refused it a label. Config names come first, then the servers' own
    ``model_name``, then adapters (the cut drops those)."""
    eps = []
    for p in range(10):
        ads = ",".join(f"ad-{p}-{i}" for i in range(8))
        page = (
            'vllm:num_requests_waiting{engine="0",model_name="zeta-base"} 0\n'
            'vllm:lora_requests_info{max_lora="8",'
            f'running_lora_adapters="{ads}",waiting_lora_adapters=""}} 1\n'
        )
        e = Endpoint(address=f"10.0.0.{p}:8000")
        e.metrics = extract(page, "vllm", now=1.0)
        eps.append(e)
    agg = aggregate("p", eps, now=1.0, wall=1.0, models=["zeta"])
    assert len(agg.models) == MAX_MODELS
    assert agg.models[:2] == ("zeta", "zeta-base"), agg.models[:3]


def test_received_aggregate_models_are_bounded() -> None:
    """Review s14-doors A: the bounds (64 names of at most 256 characters) held only when sending; a peer
    (or anything answering at a cluster's aggregate URL) could send ~20,000 names or one of 200 KB, which
    the hub and global gateway kept. Cut on receive as the sender cuts, in the sender's order (its config
    names first); an aggregate without ``models`` (an older kvgate) still decodes."""
    many = [f"z{i:05d}" for i in range(20000)]
    raw = orjson.dumps({"name": "p", "snapshot_time": 1.0, "ready_endpoints": 1, "total_endpoints": 1,
                        "models": ["x" * 50_000, "zz-config", *many]})  # fmt: skip
    agg = decode(raw)
    assert agg.models == ("zz-config", *many[: MAX_MODELS - 1])
    assert decode(b'{"name":"p","snapshot_time":1.0,"ready_endpoints":1,"total_endpoints":1}').models == ()


def test_a_cluster_listing_no_models_does_not_veto_its_names() -> None:
    """Review s14-doors B (a mixed-version fleet): while one cluster's gateway lists names and another's
    (an older kvgate: no ``models``) lists none, a name only the old cluster serves was refused a label
    until every peer was upgraded. It is learnt again, into the slots the listed names leave."""
    new = ClusterState(ClusterSpec("new", gateway="10.0.0.1:80"))
    old = ClusterState(ClusterSpec("old", gateway="10.0.0.2:80"))
    new.set_aggregate(PoolAggregate("p", 1.0, 1, 1, models=("m-new",)), 0.0)
    old.set_aggregate(
        decode(b'{"name":"p","snapshot_time":1.0,"ready_endpoints":1,"total_endpoints":1}'), 0.0
    )
    labels = ModelLabels(reported=models_listed(lambda: [new, old], lambda: 0.0))
    labels.served("m-old")  # a 2xx from the old cluster for the model only it serves
    assert labels.label("m-old") == "m-old" and labels.label("m-new") == "m-new"
