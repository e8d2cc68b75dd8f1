"""Review s31-qa31 Q3 (H): in ``kvgate serve`` with two watched pools, pool A's InferenceModelRewrite (a
generic fallback, or an exact rule naming pool B's model) rewrote every request, pool B's too: every pool's
live rules went into one rewriter applied before the pool is chosen. Upstream scopes a rewrite object to
the pool its ``poolRef`` names; now a model a pool serves takes only that pool's rules
(``PoolScopedRewriter``), an alias no pool serves takes every pool's exact rules, then the first generic.
The serve test and the unit test fail on 691110b3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from k8s.pool_scope_kit import POLICY, add_pod, chat, pool_obj, serving, until
from kvgate.config.gateway import RewriteRule, RewriteTarget
from kvgate.config.rewrite import PoolScopedRewriter
from kvgate.k8s.apiserver import ApiServerDouble

sim = pytest.importorskip("kvgate.sim.server")


def _rule(matches: list[str], *targets: str) -> RewriteRule:
    return RewriteRule(matches, [RewriteTarget(t, 1) for t in targets])


def test_a_pools_rules_apply_to_its_own_models_and_to_aliases_only() -> None:
    served = {"a-model": "a", "b-model": "b", "s-model": "static"}
    file_rules = [_rule(["alias"], "s-model"), _rule(["old-a"], "a-model")]
    live = {"a": [_rule(["b-model", "a-alias"], "a-model"), _rule([], "a-model")]}
    rw = PoolScopedRewriter(file_rules, served, live, seed=0)
    assert rw.rewrite("b-model") == "b-model", "pool A's exact rule took pool B's model"
    assert rw.rewrite("s-model") == "s-model", "pool A's generic rule took the static pool's model"
    assert rw.rewrite("a-model") == "a-model"
    assert rw.rewrite("a-alias") == "a-model"  # an alias pool A's rule names
    assert rw.rewrite("alias") == "s-model", "the static pool's file alias was dropped"
    assert rw.rewrite("old-a") == "a-model"  # (replaced, then taken by pool A's generic rule)
    assert rw.file_rules == (file_rules[0],)  # the file rule targeting pool A only is replaced
    assert rw.rewrite("unknown") == "a-model"  # a name no pool serves: the first generic rule
    assert [r.matches for r in rw.rules] == [["alias"], ["a-alias"], []]  # (what /v1/models lists)
    # Without live rules it rewrites as the file's rules do.
    plain = PoolScopedRewriter(file_rules, served, {"a": []}, seed=0)
    assert [plain.rewrite(m) for m in ("alias", "old-a", "b-model")] == ["s-model", "a-model", "b-model"]


def _served(rep: Any) -> int:
    return sum(rep.counters.finished.values())


async def test_a_pools_generic_rewrite_does_not_take_another_pools_requests(tmp_path: Path) -> None:
    rep_a = sim.Replica(sim.ReplicaConfig(model="a-model", time_scale=50.0, seed=1), index=0)
    rep_b = sim.Replica(sim.ReplicaConfig(model="b-model", time_scale=50.0, seed=2), index=1)
    await rep_a.start()
    await rep_b.start()
    try:
        async with ApiServerDouble(bookmark_interval=0.2) as d:
            d.create(pool_obj("a", labels={"app": "a"}, ports=(rep_a.port,)))
            d.create(pool_obj("b", labels={"app": "b"}, ports=(rep_b.port,)))
            add_pod(d, "pa", "127.0.0.1", labels={"app": "a"})
            add_pod(d, "pb", "127.0.0.1", labels={"app": "b"})
            f = tmp_path / "gw.yaml"
            f.write_text(
                "pools:\n"
                "- name: a\n  models: [a-model]\n  inferencePool: {name: a, namespace: default}\n"
                "- name: b\n  models: [b-model]\n  inferencePool: {name: b, namespace: default}\n"
            )
            async with (
                serving(d, "--config", str(f), "--policy", "round-robin") as (gw, url),
                aiohttp.ClientSession() as http,
            ):
                await until(lambda: all(len(p.store) == 1 for p in gw.pools), what="both pools' pods")
                assert (await chat(http, url, "b-model"))[0] == 200
                assert (_served(rep_a), _served(rep_b)) == (0, 1)
                # Pool A's fallback ("any model reaching pool A") and an exact rule naming b-model.
                rules = [{"targets": [{"modelRewrite": "a-model"}]},
                         {"matches": [{"model": {"value": "b-model"}}],
                          "targets": [{"modelRewrite": "a-model"}]}]  # fmt: skip
                d.create({"apiVersion": POLICY, "kind": "InferenceModelRewrite",
                          "metadata": {"name": "a-fallback"},
                          "spec": {"poolRef": {"group": "inference.networking.k8s.io", "name": "a"},
                                   "rules": rules}})  # fmt: skip
                await until(
                    lambda: gw.proxy is not None and bool(gw.proxy.rewriter.rules),
                    what="pool A's rules read",
                )
                for _ in range(4):
                    assert (await chat(http, url, "b-model"))[0] == 200
                assert (_served(rep_a), _served(rep_b)) == (0, 5), "pool B's requests went to pool A"
                # A name no pool serves reaches pool A's fallback.
                assert (await chat(http, url, "some-alias"))[0] == 200
                assert (_served(rep_a), _served(rep_b)) == (1, 5)
    finally:
        await rep_a.stop()
        await rep_b.stop()
