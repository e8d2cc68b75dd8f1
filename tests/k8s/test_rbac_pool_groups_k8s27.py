"""k8s27: the shipped EPP Roles (the chart's and deploy/kvgate-epp.yaml's) grant every request discovery
makes, for either ``--pool-group``. Both granted ``inferencepools`` in the v1 group only: an EPP on a v1alpha2
pool (``--pool-group inference.networking.x-k8s.io``, llm-d v0.3's pools) was refused its pool (403, not
ready for good). Both groups are granted (a superset of upstream's chart, whose Role grants ``inferencepools``
in one group: that of its ``inferencePool.apiVersion``).

``KubePool`` as ``kvgate epp --pool-name --ha-enable-leader-election`` builds it runs against an API-server
double that records the RBAC verb of each request (tests/k8s/test_chart.py's ``_Recording``: named
resources under ``/apis``; the pods' core group is not recorded); every one must be in each Role's rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s.test_chart import BASE, _Recording, _rules, render
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.runtime import KubeOptions, KubePool

ROOT = Path(__file__).resolve().parents[2]


def _role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [role] = [d for d in docs if d["kind"] == "Role"]
    return role


def shipped_roles() -> dict[str, dict[str, Any]]:
    manifest = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kvgate-epp.yaml").read_text()) if d]
    return {"chart": _role(render(BASE)), "manifest": _role(manifest)}


def pool(group: str) -> dict[str, Any]:
    if group == R.LEGACY_GROUP:  # v1alpha2's shape
        spec: dict[str, Any] = {"selector": {"app": "vllm"}, "targetPortNumber": 8000,
                                "extensionRef": {"name": "llm-epp"}}  # fmt: skip
    else:
        spec = {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]}
    rt = R.POOL_GROUPS[group]
    return {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": {"name": "llm"}, "spec": spec}


async def _until(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("group", sorted(R.POOL_GROUPS))
async def test_the_shipped_roles_grant_every_request_discovery_makes(group: str) -> None:
    """Main (6782b99d): for inference.networking.x-k8s.io both Roles lack ``list``/``watch`` on its
    ``inferencepools``; the v1 group is the control."""
    async with _Recording() as d:
        d.create(pool(group))
        d.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}})
        d.set_pod_status("p0", ip="10.0.0.7", ready=True)
        opts = KubeOptions("llm", "default", pool_group=group, server=d.url, leader_election=True,
                           retry_period_s=0.2)  # fmt: skip
        store = EndpointStore()
        kp = KubePool(opts, store, on_policy=lambda _o, _r: None)
        await kp.start()
        try:
            await _until(lambda: {e.address for e in store.all()} == {"10.0.0.7:8000"}, "the pod's endpoint")
            await _until(lambda: kp.problem() is None, f"ready and leading (last: {kp.problem()})")
        finally:
            await kp.stop()  # (the Lease released)
    assert (group, "inferencepools", "watch") in d.used  # (the recording saw the pool's watch)
    for name, role in shipped_roles().items():
        assert d.used - _rules(role) == set(), f"{name}'s Role lacks these"
