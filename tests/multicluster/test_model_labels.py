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
from kvgate.openai.labels import GRACE_S, KEEP_S, MAX_MODEL_LABELS, MAX_REPORTED_NAMES, ModelLabels


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


async def test_a_names_series_go_from_every_family_after_the_grace() -> None:
    """labels15: a name a cluster answered (learnt) and then no longer used keeps no series past GRACE_S:
    ``kvgate_multicluster_requests_total`` (a prometheus_client counter) and the ``inference_objective_*``
    families lose it at the next scrape (the model labels' clock injected); the same name used again
    starts from 0 (before: kept for the process's life)."""
    backend = await Backend("b0", tokens=2).start()  # answers any ``model`` with a 200
    mc = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin",
                       fetch=False, seed=1)  # fmt: skip
    clock = [0.0]
    mc.metrics.models.clock = lambda: clock[0]
    await mc.start("127.0.0.1", 0)

    async def post(s: aiohttp.ClientSession, model: str) -> None:
        body = orjson.dumps({"model": model, "prompt": "x", "max_tokens": 2})
        async with s.post(f"http://127.0.0.1:{mc.port}/v1/completions", data=body) as r:
            assert r.status == 200
            await r.read()
        await eventually(lambda: mc.inflight == 0, "the global gateway's requests ended")

    async def scrape(s: aiohttp.ClientSession) -> str:
        async with s.get(f"http://127.0.0.1:{mc.port}/metrics") as r:
            return await r.text()

    try:
        async with aiohttp.ClientSession() as s:
            await post(s, "lora-a")
            await post(s, "lora-a")
            text = await scrape(s)
            assert (
                'kvgate_multicluster_requests_total{cluster="c",mode="parent",model_name="lora-a"} 2.0'
                in text
            )
            assert (
                'inference_objective_request_total{model_name="lora-a",priority="0",'
                'target_model_name="lora-a"} 2.0' in text
            )
            clock[0] += GRACE_S - 1.0
            assert 'model_name="lora-a"' in await scrape(s)  # unseen, not yet GRACE_S
            clock[0] += 1.0
            assert 'model_name="lora-a"' not in await scrape(s)  # fails before: kept
            assert not mc.metrics.models.learnt
            await post(s, "lora-a")
            text = await scrape(s)
            assert (
                'kvgate_multicluster_requests_total{cluster="c",mode="parent",model_name="lora-a"} 1.0'
                in text
            )
    finally:
        await mc.stop()
        await backend.stop()


def test_a_churning_cluster_cannot_push_out_another_clusters_kept_names() -> None:
    """labels15 (session 14's note): the names kept after their cluster stopped listing them were shared
    by all clusters, the most recently listed first, so a peer listing 64 different names on every fetch
    took every kept place within four fetches and a steady cluster's adapter, idle at one scrape, lost its
    label. Now each cluster holds at most MAX_MODELS names (its latest list, then its own kept names):
    the churning peer churns only its own 64."""
    clock = [0.0]
    steady = ClusterState(ClusterSpec("steady", gateway="10.0.0.1:80"))
    churn = ClusterState(ClusterSpec("churn", gateway="10.0.0.2:80"))
    steady.set_aggregate(PoolAggregate("p", 1.0, 1, 1, models=("base", "lora-idle")), 0.0)
    reported = models_listed(lambda: [steady, churn], lambda: clock[0])
    labels = ModelLabels(reported=reported, clock=lambda: clock[0])
    assert labels.label("lora-idle") == "lora-idle"
    steady.set_aggregate(PoolAggregate("p", 1.0, 1, 1, models=("base",)), 0.0)  # idle at this scrape
    for fetch in range(20):
        churn.set_aggregate(
            PoolAggregate("p", 1.0, 1, 1, models=tuple(f"x{fetch}-{i}" for i in range(64))), 0.0
        )
        clock[0] += 2.0
        names = reported()
        assert "lora-idle" in names and "base" in names, fetch
        assert len([n for n in names if n.startswith("x")]) <= MAX_MODELS  # fails before: 128 at fetch 1
    assert labels.label("lora-idle") == "lora-idle"
    clock[0] += KEEP_S  # not listed for KEEP_S: it goes
    assert "lora-idle" not in reported()


def test_each_clusters_latest_list_comes_before_any_kept_name() -> None:
    """Five clusters' latest lists (64 names each) fill the 256 cut before any name one of them listed
    earlier: kept names never push out a name a cluster lists now."""
    clock = [0.0]
    states = [ClusterState(ClusterSpec(f"c{i}", gateway=f"10.0.0.{i}:80")) for i in range(5)]
    for i, st in enumerate(states):
        st.set_aggregate(PoolAggregate("p", 1.0, 1, 1, models=tuple(f"old-{i}-{j}" for j in range(64))), 0.0)
    reported = models_listed(lambda: states, lambda: clock[0])
    reported()
    for i, st in enumerate(states):
        st.set_aggregate(PoolAggregate("p", 1.0, 1, 1, models=tuple(f"new-{i}-{j}" for j in range(64))), 0.0)
    clock[0] += 2.0
    names = reported()
    assert len(names) == MAX_REPORTED_NAMES
    assert all(n.startswith("new-") for n in names)
    assert {f"new-{i}-0" for i in range(5)} <= names


async def test_a_stream_longer_than_the_grace_keeps_its_learnt_label_at_its_end() -> None:
    """A learnt name used only by one stream that outlasts GRACE_S keeps its label and series while the
    stream is in flight (``ModelLabels.hold``), so 16 other names taking the free slots meanwhile cannot
    push its end into ``other`` (review s15-labels L2: dropped mid-stream, its start's count removed, its
    end counted under ``other`` once the slots were taken)."""
    backend = await Backend("b0", tokens=3).start()  # answers any ``model`` with a 200
    backend.pause_after = 1
    mc = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin",
                       fetch=False, seed=1)  # fmt: skip
    clock = [0.0]
    mc.metrics.models.clock = lambda: clock[0]
    await mc.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{mc.port}"
    try:
        async with aiohttp.ClientSession() as s:
            body = orjson.dumps({"model": "long-lora", "prompt": "x", "max_tokens": 3, "stream": True})
            async with s.post(f"{url}/v1/completions", data=body) as r:
                assert r.status == 200
                await backend.paused.wait()
                clock[0] += GRACE_S + 1.0
                async with s.get(f"{url}/metrics") as m:
                    text = await m.text()
                assert "long-lora" in mc.metrics.models.learnt  # in flight: kept (fails before)
                assert (
                    'kvgate_multicluster_requests_total{cluster="c",mode="parent",model_name="long-lora"} 1.0'
                    in text
                )
                for i in range(MAX_MODEL_LABELS):  # other names take every free slot meanwhile
                    short = orjson.dumps({"model": f"name-{i}", "prompt": "x", "max_tokens": 1})
                    async with s.post(f"{url}/v1/completions", data=short) as r2:
                        assert r2.status == 200
                        await r2.read()
                backend.resume.set()
                await r.read()
            await eventually(lambda: mc.inflight == 0, "the global gateway's requests ended")
        assert not mc.metrics.models.inflight  # (every hold dropped at its request's end)
    finally:
        await mc.stop()
        await backend.stop()
    stats = request_stats(mc.metrics.registry)
    assert stats[("inference_objective_request_total", "long-lora", "long-lora")] == 1
