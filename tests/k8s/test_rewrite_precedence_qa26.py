"""qa26 F1: InferenceModelRewrite objects from Kubernetes merge by upstream's precedence (they did not).

Upstream (GIE apix/v1alpha2 inferencemodelrewrite_types.go; the EPP's datastore
``modelRewriteStore.getRule``): exact matches across every rewrite of the pool win over generic ones
(``matches: []``), and among those the *oldest* object (``metadata.creationTimestamp``) wins. kvgate
(``k8s/discovery.py`` ``PoolDiscovery.rewrites``) concatenated the rules of every object sorted by object
*name* and ``ModelRewriter.rewrite`` took the first rule that matched, a catch-all included: a generic
fallback whose name sorted first swallowed every alias, and an alias object created later but named
earlier overrode the older one. (Tests from qa26's review, ``kvgate serve --pool-name`` against the
API-server double.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import aiohttp
import orjson

from kvgate.gateway.cli import _parser, build_config, build_pools
from kvgate.gateway.server import GatewayServer
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.sim import server as sim


async def _until(cond: Callable[[], bool], within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


class Clock:
    """The double's creationTimestamp source (seconds precision): moved by hand so "older" is exact."""

    def __init__(self) -> None:
        self.t = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.t


def _rewrite(name: str, rules: list[dict]) -> dict:
    return {"apiVersion": "llm-d.ai/v1alpha2", "kind": "InferenceModelRewrite", "metadata": {"name": name},
            "spec": {"poolRef": {"group": "inference.networking.k8s.io", "name": "llm"},
                     "rules": rules}}  # fmt: skip


async def _run(objects: list[dict], ask: str) -> tuple[int, dict]:
    rep = sim.Replica(sim.ReplicaConfig(model="served", time_scale=50.0, seed=1), index=0)
    await rep.start()
    clock = Clock()
    async with ApiServerDouble(now=clock) as double:
        double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                       "metadata": {"name": "llm"},
                       "spec": {"selector": {"matchLabels": {"app": "sim"}},
                                "targetPorts": [{"number": rep.port}]}})  # fmt: skip
        double.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "sim"}}}
        )
        double.set_pod_status("p0", ip="127.0.0.1", ready=True)
        for obj in objects:  # in creation order, one minute apart
            double.create(obj)
            clock.t += dt.timedelta(minutes=1)
        args = _parser().parse_args(["--pool-name", "llm", "--model", "served", "--kube-server", double.url,
                                     "--host", "127.0.0.1", "--port", "0"])  # fmt: skip
        cfg = build_config(args)
        gw = GatewayServer(cfg, build_pools(cfg), scrape=True)
        await gw.start()
        try:
            await _until(lambda: len(gw.pools[0].store) == 1 and bool(gw.proxy and gw.proxy.rewriter))
            body = {"model": ask, "max_tokens": 2, "prompt": "hi"}
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=orjson.dumps(body)) as resp,
            ):
                return resp.status, orjson.loads(await resp.read())
        finally:
            await gw.stop(drain_timeout=1.0)
            await rep.stop()


async def test_an_exact_match_wins_over_a_generic_fallback_in_another_rewrite() -> None:
    # The alias (exact "alias" -> the served model) and a generic fallback to a model nobody serves.
    alias = _rewrite("z-alias", [{"matches": [{"model": {"type": "Exact", "value": "alias"}}],
                                  "targets": [{"modelRewrite": "served"}]}])  # fmt: skip
    fallback = _rewrite("a-fallback", [{"matches": [], "targets": [{"modelRewrite": "retired-model"}]}])
    status, body = await _run([alias, fallback], "alias")
    # upstream: "alias" has an exact rule -> "served" -> 200; kvgate took a-fallback's catch-all first
    assert status == 200, (status, body)


async def test_the_oldest_rewrite_wins_a_tie_not_the_first_name() -> None:
    old = _rewrite("z-stable", [{"matches": [{"model": {"value": "alias"}}],
                                 "targets": [{"modelRewrite": "served"}]}])  # fmt: skip
    new = _rewrite("a-canary", [{"matches": [{"model": {"value": "alias"}}],
                                 "targets": [{"modelRewrite": "not-there-yet"}]}])  # fmt: skip
    status, body = await _run([old, new], "alias")
    # upstream: the older object (z-stable) decides -> "served" -> 200; kvgate: a-canary by name
    assert status == 200, (status, body)


async def test_control_the_alias_alone_routes() -> None:
    """(passes on main: the failures above are the precedence, not the set-up)"""
    alias = _rewrite("z-alias", [{"matches": [{"model": {"value": "alias"}}],
                                  "targets": [{"modelRewrite": "served"}]}])  # fmt: skip
    status, body = await _run([alias], "alias")
    assert status == 200 and body["model"] == "alias", (status, body)


def test_inside_one_rule_list_an_exact_rule_wins_over_an_earlier_generic_one() -> None:
    """The config file's ``rewrites`` and one object's rules read the same way (both doors share
    ``ModelRewriter``): a generic rule before an exact one does not take the exact one's model."""
    from kvgate.config.gateway import RewriteRule, RewriteTarget
    from kvgate.config.rewrite import ModelRewriter, client_names

    rules = [
        RewriteRule([], [RewriteTarget("fallback", 1)]),
        RewriteRule(["alias"], [RewriteTarget("served", 1)]),
        RewriteRule(["alias"], [RewriteTarget("later", 1)]),
    ]
    rw = ModelRewriter(rules, seed=1)
    assert rw.rewrite("alias") == "served"  # (main: "fallback")
    assert rw.rewrite("other") == "fallback"
    assert client_names(rules, {"served"}) == [("alias", "served")]
