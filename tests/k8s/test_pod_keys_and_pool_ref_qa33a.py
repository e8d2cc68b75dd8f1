"""Review qa33a F7, F6, F8: what kvgate reads of a pod and of an objective's ``poolRef``, as upstream.

- F7: an ``active-ports`` annotation present and EMPTY names no port (the reference's
  ``ExtractActivePorts``: only an absent annotation means every target port); kvgate gave the pod
  every port, also after the annotation was emptied live.
- F6: llm-d's keys, ``llm-d.ai/active-ports`` (read before GIE's deprecated
  ``inference.networking.k8s.io/active-ports``) and the label ``llm-d.ai/engine-type`` (the reference's
  ``engineLabelKey`` default), were ignored.
- F8: an InferenceObjective / InferenceModelRewrite whose ``poolRef.group`` names the other pool group
  (a v1alpha2 pool of the same name) was applied to the v1 pool (upstream's reconcilers match name and
  group).
Each fails on bad6d5ca."""

from __future__ import annotations

from typing import Any

from k8s.pool_scope_kit import POLICY, add_pod, pool_obj, until
from kvgate.config.gateway import RewriteRule
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.discovery import PoolSpec, pod_endpoints
from kvgate.k8s.runtime import KubeOptions, KubePool
from kvgate.k8s.stalepolicy import StalenessPolicy

ACTIVE_PORTS = "inference.networking.k8s.io/active-ports"
LLMD_ACTIVE_PORTS = "llm-d.ai/active-ports"  # (llm-d's key first: pkg/epp/util/pod ExtractActivePorts)
SPEC = PoolSpec("qa33a", "default", {"app": "sim"}, (8000, 8001))


def _pod(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p0", "labels": {"app": "sim", **(labels or {})}}
    if annotations is not None:
        meta["annotations"] = annotations
    status = {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def _addrs(annotations: dict[str, str] | None) -> set[str]:
    return {e.address for e in pod_endpoints(_pod(annotations), SPEC)}


def test_active_ports_present_and_empty_names_no_port() -> None:
    assert _addrs(None) == {"10.0.0.1:8000", "10.0.0.1:8001"}  # absent: every target port
    assert _addrs({ACTIVE_PORTS: ""}) == set()
    assert _addrs({LLMD_ACTIVE_PORTS: " "}) == set()


def test_llmd_active_ports_first_then_the_legacy_key() -> None:
    assert _addrs({LLMD_ACTIVE_PORTS: "8001"}) == {"10.0.0.1:8001"}
    assert _addrs({LLMD_ACTIVE_PORTS: "8000", ACTIVE_PORTS: "8001"}) == {"10.0.0.1:8000"}
    assert _addrs({LLMD_ACTIVE_PORTS: "", ACTIVE_PORTS: "8001"}) == set()  # (present: it decides)
    assert _addrs({ACTIVE_PORTS: "8001"}) == {"10.0.0.1:8001"}


def test_engine_label_llmd_first_then_gie_or_the_one_key_given() -> None:
    def engine(labels: dict[str, str], keys: tuple[str, ...] | None = None) -> str:
        pod = _pod(labels=labels)
        [ep, _] = pod_endpoints(pod, SPEC) if keys is None else pod_endpoints(pod, SPEC, None, keys)
        return ep.engine

    assert engine({"llm-d.ai/engine-type": "sglang"}) == "sglang"
    assert engine({"inference.networking.k8s.io/engine-type": "sglang"}) == "sglang"
    both = {"llm-d.ai/engine-type": "sglang", "inference.networking.k8s.io/engine-type": "trtllm-serve"}
    assert engine(both) == "sglang"
    assert engine({}) == "vllm"
    # ``kvgate epp --engine-label-key K``: that key only, as the reference reads its one key
    assert engine({"example.com/engine": "sglang"}, ("example.com/engine",)) == "sglang"
    assert engine({"llm-d.ai/engine-type": "sglang"}, ("example.com/engine",)) == "vllm"


class _Policy:
    def __init__(self) -> None:
        self.objectives: dict[str, int] = {}
        self.rewrites: list[RewriteRule] = []

    def __call__(self, objectives: dict[str, int], rewrites: list[RewriteRule]) -> None:
        self.objectives, self.rewrites = dict(objectives), list(rewrites)


async def test_live_discovery_follows_the_pod_keys() -> None:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool_obj("qa33a", ports=(8000, 8001)))
        add_pod(d, "marker", "10.0.0.9")
        add_pod(d, "idle", "10.0.0.1", annotations={ACTIVE_PORTS: ""})
        add_pod(d, "dp", "10.0.0.2", annotations={LLMD_ACTIVE_PORTS: "8000,8001"},
                labels={"app": "sim", "llm-d.ai/engine-type": "sglang"})  # fmt: skip
        store = EndpointStore()
        opts = KubeOptions("qa33a", "default", server=d.url, staleness=StalenessPolicy())
        kp = KubePool(opts, store, store_pool="qa33a")
        await kp.start()
        try:
            dp = {"10.0.0.2:8000", "10.0.0.2:8001"}
            want = {"10.0.0.9:8000", "10.0.0.9:8001", *dp}  # the idle pod: none
            await until(lambda: {e.address for e in store.all()} == want, what="each pod's ports")
            assert {e.engine for e in store.all() if e.address in dp} == {"sglang"}
            # Emptied live: the pod's endpoints leave (an llm-d launcher marking every rank inactive).
            d.patch(R.POD, "dp", "default", {"metadata": {"annotations": {LLMD_ACTIVE_PORTS: ""}}})
            await until(lambda: {e.address for e in store.all()} == want - dp, what="dp's ports gone")
        finally:
            await kp.stop()


async def test_live_objectives_and_rewrites_match_the_pool_ref_group() -> None:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool_obj("qa33a"))
        legacy = f"{R.LEGACY_GROUP}/v1alpha2"
        for api, name, group, prio in ((POLICY, "mine", R.INFERENCE_POOL.group, 3),
                                       (POLICY, "theirs", R.LEGACY_GROUP, 7), (POLICY, "llmd-bare", None, 5),
                                       (legacy, "legacy-bare", None, 4)):  # fmt: skip
            ref = {"name": "qa33a"} if group is None else {"group": group, "name": "qa33a"}
            d.create({"apiVersion": api, "kind": "InferenceObjective", "metadata": {"name": name},
                      "spec": {"priority": prio, "poolRef": ref}})  # fmt: skip
        rule = {"matches": [{"model": {"value": "m1"}}], "targets": [{"modelRewrite": "m2"}]}
        for name, group in (("theirs", R.LEGACY_GROUP), ("mine", R.INFERENCE_POOL.group)):
            spec = {"poolRef": {"group": group, "name": "qa33a"}, "rules": [rule]}
            d.create({"apiVersion": POLICY, "kind": "InferenceModelRewrite", "metadata": {"name": name},
                      "spec": spec})  # fmt: skip
        policy = _Policy()
        opts = KubeOptions("qa33a", "default", server=d.url, staleness=StalenessPolicy())
        kp = KubePool(opts, EndpointStore(), store_pool="qa33a", on_policy=policy)
        await kp.start()
        try:
            # (no group: what the object's own CRD stores, rev-b33 F1: llm-d.ai's is llm-d.ai, not this
            # pool's; the legacy x-k8s one's the v1 group; the v1alpha2 pool's objects are not this pool's)
            await until(
                lambda: policy.objectives == {"mine": 3, "legacy-bare": 4}, what="this pool's objectives"
            )
            await until(lambda: len(policy.rewrites) == 1, what="this pool's rewrite")
        finally:
            await kp.stop()
