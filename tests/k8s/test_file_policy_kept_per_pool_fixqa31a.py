"""Review s31-qa31 Q1: an InferenceObjective of *another* pool dropped the config file's ``rewrites``
(``kvgate serve``: a static pool's alias answered 404) and ``objectives`` (``kvgate epp``), because discovery
published on every policy event of the namespace and each listener replaced the file's with the (empty)
live view, globally in ``kvgate serve``. Now discovery publishes this pool's view only when it changes,
and a pool's objects replace the file's for that pool only, while it has any. Each test fails on 691110b3."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from k8s.pool_scope_kit import POLICY, add_pod, chat, pool_obj, serving, until
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.cli import _kube_pool, parser
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.stalepolicy import StalenessPolicy
from kvgate.openai.request import RequestPolicy

sim = pytest.importorskip("kvgate.sim.server")


def _objective(name: str, pool: str, priority: int = 5) -> dict[str, Any]:
    return {"apiVersion": POLICY, "kind": "InferenceObjective", "metadata": {"name": name},
            "spec": {"priority": priority,
                     "poolRef": {"group": "inference.networking.k8s.io", "name": pool}}}  # fmt: skip


def _rewrite(name: str, pool: str, alias: str, target: str) -> dict[str, Any]:
    rule = {"matches": [{"model": {"value": alias}}], "targets": [{"modelRewrite": target}]}
    return {"apiVersion": POLICY, "kind": "InferenceModelRewrite", "metadata": {"name": name},
            "spec": {"poolRef": {"group": "inference.networking.k8s.io", "name": pool},
                     "rules": [rule]}}  # fmt: skip


async def test_serves_static_alias_survives_objects_of_other_pools_and_of_the_watched_one(
    tmp_path: Path,
) -> None:
    static = sim.Replica(sim.ReplicaConfig(model="static-model", time_scale=50.0, seed=1), index=0)
    watched = sim.Replica(sim.ReplicaConfig(model="sim-model", time_scale=50.0, seed=2), index=1)
    await static.start()
    await watched.start()
    try:
        async with ApiServerDouble(bookmark_interval=0.2) as d:
            d.create(pool_obj(ports=(watched.port,)))
            add_pod(d, "p0", "127.0.0.1")
            f = tmp_path / "gw.yaml"
            f.write_text(
                "pools:\n"
                f"- name: static\n  models: [static-model]\n  endpoints: ['127.0.0.1:{static.port}']\n"
                "- name: llm\n  models: [sim-model]\n  inferencePool: {name: llm, namespace: default}\n"
                "objectives:\n- {name: chat, priority: 7}\n"
                "rewrites:\n- matches: [{model: {value: alias}}]\n  targets: [{modelRewrite: static-model}]\n"
                "- matches: [{model: {value: sim-alias}}]\n  targets: [{modelRewrite: sim-model}]\n"
            )
            async with serving(d, "--config", str(f), "--policy", "round-robin") as (gw, url):
                assert gw.proxy is not None
                proxy = gw.proxy
                async with aiohttp.ClientSession() as http:
                    await until(lambda: len(gw.pools[1].store) == 1, what="the watched pool's pod")
                    assert (await chat(http, url, "alias"))[0] == 200
                    # An objective of another pool: nothing this gateway serves changes.
                    d.create(_objective("o", "some-other-pool"))
                    d.create(_objective("mark", "llm"))  # (read after it: the listener has run)
                    await until(
                        lambda: "mark" in proxy.policies["llm"].objectives, what="this pool's objective"
                    )
                    assert dict(proxy.policies["static"].objectives) == {"chat": 7}
                    assert (await chat(http, url, "alias"))[0] == 200, (
                        "the static pool's file alias was dropped"
                    )
                    # The watched pool's own rewrite replaces the file's rule for its model, not the static's.
                    d.create(_rewrite("rw", "llm", "live-alias", "sim-model"))
                    await until(
                        lambda: proxy.rewriter.rewrite("live-alias") == "sim-model", what="the live rule"
                    )
                    assert (await chat(http, url, "live-alias"))[0] == 200
                    assert (await chat(http, url, "alias"))[0] == 200, (
                        "the watched pool's rule dropped the static's"
                    )
                    status, _ = await chat(http, url, "sim-alias")
                    assert status == 404  # (the file's rule for the watched pool's model: replaced)
                    # Its objects gone, the file's stand again for it.
                    d.delete(R.INFERENCE_MODEL_REWRITE, "rw", "default")
                    d.delete(R.INFERENCE_OBJECTIVE, "mark", "default")
                    await until(
                        lambda: dict(proxy.policies["llm"].objectives) == {"chat": 7}, what="file's back"
                    )
                    await until(
                        lambda: proxy.rewriter.rewrite("sim-alias") == "sim-model", what="file rule back"
                    )
    finally:
        await static.stop()
        await watched.stop()


async def test_the_epps_file_policy_survives_other_pools_objects_and_comes_back() -> None:
    """``kvgate epp``'s listener (``extproc.cli._kube_pool``'s ``on_policy``) under a running ``KubePool``:
    the file's ``objectives`` (``chat: 7``) and ``rewrites`` stay through an object of another pool; this
    pool's objective replaces the file's objectives (not its rewrites); once it is gone, the file's stand
    again (as at start-up, with no object of this pool)."""
    from kvgate.config.gateway import RewriteRule, RewriteTarget

    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool_obj("llm"))
        file_rule = RewriteRule(["alias"], [RewriteTarget("m", 1)])
        cfg = SimpleNamespace(
            pool=SimpleNamespace(name="llm", models=["m"], adapters=[],
                                 inference_pool=SimpleNamespace(name="llm", namespace="default", group=None)),
            gateway=SimpleNamespace(rewrites=[file_rule], rewrite_seed=0),
        )  # fmt: skip
        ctx = SimpleNamespace(policy=RequestPolicy(objectives={"chat": 7}), observer=None, model_rewrite=None)
        args = parser().parse_args(["--pool-name", "llm", "--kube-server", d.url])
        kp = _kube_pool(args, cfg, EndpointStore(), ctx, StalenessPolicy())  # type: ignore[arg-type]
        await kp.start()
        try:
            await until(lambda: kp.discovery is not None and kp.discovery.pool is not None, what="the pool")
            d.create(_objective("o", "some-other-pool"))
            refl = kp.discovery.policy_reflectors[("llm-d.ai", "InferenceObjective")]
            await until(lambda: "o" in {k[1] for k in refl.items}, what="the objective read")
            await asyncio.sleep(0.5)  # (the listener runs as the event is read; margin for a loaded loop)
            assert dict(ctx.policy.objectives) == {"chat": 7}, "another pool's objective dropped the file's"
            d.create(_objective("mine", "llm", 3))
            await until(lambda: dict(ctx.policy.objectives) == {"mine": 3}, what="this pool's objective")
            assert ctx.model_rewrite is None or ctx.model_rewrite.rewrite("alias") == "m"
            d.delete(R.INFERENCE_OBJECTIVE, "mine", "default")
            await until(lambda: dict(ctx.policy.objectives) == {"chat": 7}, what="the file's objectives back")
            assert ctx.model_rewrite.rewrite("alias") == "m"
        finally:
            await kp.stop()
