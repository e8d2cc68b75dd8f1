"""Review s26-rev-fixqa26a R1-R3 (moved from the review's tests): the tolerated-403 objective/rewrite group
(fixqa26a, qa26 F5) when RBAC or the CRDs change live. Against the API server double. On main's src (before
fixk8s26) the four R1-R3 tests fail; the granted-live one (403 -> 200 from the start) passes (a control)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.runtime import KubeOptions, KubePool

POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "llm"},
    "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
}


async def _until(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.05)


def _setup(double: ApiServerDouble) -> None:
    double.create(POOL)
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}})
    double.set_pod_status("p0", ip="10.0.0.1", ready=True)
    double.create(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "kind": "InferenceObjective",
            "metadata": {"name": "crit"},
            "spec": {"priority": 5, "poolRef": {"name": "llm"}},
        }
    )


def _gauge(name: str) -> str:
    text = generate_latest(REGISTRY).decode()
    line = [ln for ln in text.splitlines() if ln.startswith(f'kvgate_reflector_forbidden{{name="{name}"}}')]
    return line[0].rsplit(" ", 1)[1] if line else "absent"


async def test_forbidden_group_granted_live_is_read_and_gauge_clears() -> None:
    """403 -> 200 (RBAC granted live): the group's objects arrive, the gauge goes back to 0."""
    async with ApiServerDouble() as double:
        _setup(double)
        double.create(
            {
                "apiVersion": "llm-d.ai/v1alpha2",
                "kind": "InferenceObjective",
                "metadata": {"name": "new"},
                "spec": {"priority": 9, "poolRef": {"group": "inference.networking.k8s.io", "name": "llm"}},
            }
        )
        double.forbid(R.INFERENCE_OBJECTIVE)
        policies: list[tuple[dict[str, int], list[Any]]] = []
        kp = KubePool(
            KubeOptions("llm", "default", server=double.url),
            EndpointStore(),
            store_pool="llm",
            on_policy=lambda o, r: policies.append((o, r)),
        )
        await kp.start()
        try:
            await _until(lambda: kp.problem() is None, "ready with llm-d.ai forbidden")
            assert _gauge("inferenceobjectives.llm-d.ai/v1alpha2 in default") == "1.0"
            double.forbid(R.INFERENCE_OBJECTIVE, False)
            await _until(
                lambda: bool(policies) and policies[-1][0] == {"crit": 5, "new": 9},
                "the llm-d.ai objective read once granted",
            )
            await _until(
                lambda: _gauge("inferenceobjectives.llm-d.ai/v1alpha2 in default") == "0.0", "gauge back to 0"
            )
            assert kp.problem() is None
        finally:
            await kp.stop()


async def test_tolerated_group_stays_tolerated_when_the_other_group_goes_away() -> None:
    """The other group's CRD removed (404 from then on): neither group of InferenceObjective is readable,
    the case the docs say 'stays not-ready (one refused and the other's CRD absent)'. The check is
    ``other.synced.is_set()``, an Event set at the first list and never cleared."""
    async with ApiServerDouble() as double:
        _setup(double)
        double.forbid(R.INFERENCE_OBJECTIVE)
        kp = KubePool(KubeOptions("llm", "default", server=double.url), EndpointStore(), store_pool="llm")
        await kp.start()
        try:
            await _until(lambda: kp.problem() is None, "ready with llm-d.ai forbidden")
            legacy = kp.discovery.policy_reflectors[(R.LEGACY_GROUP, "InferenceObjective")]  # type: ignore[union-attr]
            # the legacy CRD deleted: its objects go, the API answers 404 for the kind from now on
            double.delete(R.LEGACY_INFERENCE_OBJECTIVE, "crit")
            double.types.pop((R.LEGACY_GROUP, "inferenceobjectives"))
            double._versions.pop((R.LEGACY_GROUP, "inferenceobjectives"))
            double.cut_watches()
            await _until(lambda: (legacy.error or "").startswith("404"), "legacy reflector sees 404")
            # docs/kubernetes.md: "A kind neither group of which can be read (both refused, or one refused
            # and the other's CRD absent) stays not-ready, naming the 403"
            await _until(lambda: kp.problem() is not None, f"not ready (problem {kp.problem()!r})")
        finally:
            await kp.stop()


async def test_deprecation_advice_does_not_point_at_a_group_this_epp_cannot_read(caplog: Any) -> None:
    """llm-d.ai forbidden and tolerated (ready): a legacy object still gets the advice 'move it to
    llm-d.ai/v1alpha2'. Followed, the object leaves kvgate's view (the new group is not read), the EPP stays
    ready and its routing changes silently (only the start-up WARNING and the gauge said so)."""
    import logging

    async with ApiServerDouble() as double:
        _setup(double)
        double.forbid(R.INFERENCE_OBJECTIVE)
        policies: list[tuple[dict[str, int], list[Any]]] = []
        kp = KubePool(
            KubeOptions("llm", "default", server=double.url),
            EndpointStore(),
            store_pool="llm",
            on_policy=lambda o, r: policies.append((o, r)),
        )
        await kp.start()
        try:
            await _until(lambda: kp.problem() is None, "ready with llm-d.ai forbidden (tolerated)")
            caplog.clear()
            caplog.set_level(logging.WARNING, logger="kvgate.k8s.discovery")
            spec = {"priority": 1, "poolRef": {"name": "llm"}}
            double.create(
                {
                    "apiVersion": R.LEGACY_INFERENCE_OBJECTIVE.api_version,
                    "kind": "InferenceObjective",
                    "metadata": {"name": "batch"},
                    "spec": spec,
                }
            )
            await _until(lambda: bool(policies) and "batch" in policies[-1][0], "the new legacy objective")
            said = [r.getMessage() for r in caplog.records]
            advice = [m for m in said if "batch uses the deprecated group" in m]
            assert advice, said
            # the advice is given, pointing at the group this EPP is forbidden to read
            assert not any(
                "move it to llm-d.ai" in m and "forbidden" not in m and "grant" not in m for m in advice
            ), advice
        finally:
            await kp.stop()


async def test_a_group_forbidden_later_does_not_keep_applying_its_frozen_copy() -> None:
    """RBAC revoked live on llm-d.ai (e.g. a chart upgrade to the reference EPP's Role): the group is then
    tolerated (ready), and docs/kubernetes.md says it "counts as absent, as a missing CRD (404) does ...
    objects in the refused group are not read". But the reflector's last copy stays applied, frozen: an
    objective deleted (or changed) there afterwards keeps its old priority for good, with the EPP ready."""
    async with ApiServerDouble() as double:
        _setup(double)
        double.create(
            {
                "apiVersion": "llm-d.ai/v1alpha2",
                "kind": "InferenceObjective",
                "metadata": {"name": "gold"},
                "spec": {"priority": 9, "poolRef": {"group": "inference.networking.k8s.io", "name": "llm"}},
            }
        )
        policies: list[tuple[dict[str, int], list[Any]]] = []
        kp = KubePool(
            KubeOptions("llm", "default", server=double.url),
            EndpointStore(),
            store_pool="llm",
            on_policy=lambda o, r: policies.append((o, r)),
        )
        await kp.start()
        try:
            await _until(lambda: bool(policies) and policies[-1][0] == {"crit": 5, "gold": 9}, "both read")
            double.forbid(R.INFERENCE_OBJECTIVE)  # RBAC revoked on llm-d.ai
            double.cut_watches()  # (its watch ends: on a real server at its timeoutSeconds)
            name = "inferenceobjectives.llm-d.ai/v1alpha2 in default"
            await _until(lambda: _gauge(name) == "1.0", "llm-d.ai refused")
            double.delete(R.INFERENCE_OBJECTIVE, "gold")  # deleted by its owner meanwhile
            await _until(lambda: kp.problem() is None, "ready (tolerated)")
            # tolerated = absent: the refused group's objectives are not applied (polled: the reflector
            # retries with its back-off; on fcd63b79..3323fb2d the copy stays {'crit': 5, 'gold': 9})
            await _until(lambda: policies[-1][0] == {"crit": 5}, f"llm-d.ai dropped ({policies[-1][0]})")
        finally:
            await kp.stop()


async def test_a_group_refused_then_granted_again_applies_its_objects_again() -> None:
    """Revoked (dropped, as above), then granted again with nothing changed there: the relist brings no
    event (the reflector's copy is the same), yet the group's objects apply again."""
    async with ApiServerDouble() as double:
        _setup(double)
        double.create(
            {
                "apiVersion": "llm-d.ai/v1alpha2",
                "kind": "InferenceObjective",
                "metadata": {"name": "gold"},
                "spec": {"priority": 9, "poolRef": {"group": "inference.networking.k8s.io", "name": "llm"}},
            }
        )
        policies: list[tuple[dict[str, int], list[Any]]] = []
        kp = KubePool(
            KubeOptions("llm", "default", server=double.url),
            EndpointStore(),
            store_pool="llm",
            on_policy=lambda o, r: policies.append((o, r)),
        )
        await kp.start()
        try:
            await _until(lambda: bool(policies) and policies[-1][0] == {"crit": 5, "gold": 9}, "both read")
            double.forbid(R.INFERENCE_OBJECTIVE)
            double.cut_watches()
            await _until(lambda: policies[-1][0] == {"crit": 5}, f"llm-d.ai dropped ({policies[-1][0]})")
            double.forbid(R.INFERENCE_OBJECTIVE, False)
            await _until(lambda: policies[-1][0] == {"crit": 5, "gold": 9}, f"back ({policies[-1][0]})")
            assert kp.problem() is None
        finally:
            await kp.stop()
