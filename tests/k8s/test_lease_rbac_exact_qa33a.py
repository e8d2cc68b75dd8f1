"""qa33a-F3: the shipped EPP Roles grant on ``leases`` exactly what kvgate's leader election calls, no more.

The chart's Role granted ``get, list, watch, create, update, patch`` and both plain manifests also
``delete``: with ``delete`` the EPP's token could remove any other controller's Lease in the namespace.
Two views of "what kvgate calls", so neither the Roles nor the code can drift alone:
- the code: every ``client.request("<METHOD>", ...)`` in ``kvgate.k8s.lease`` (the one module that touches
  Leases: checked too), as RBAC names the method (GET of one object: get; POST: create; PUT: update);
- the run: ``KubePool`` as ``kvgate epp --ha-enable-leader-election`` builds it, against the recording
  API-server double (tests/k8s/test_chart.py's ``_Recording``), through a first take (create), renewals
  and a release on stop (update), and a takeover of a Lease another holder left to expire (update).
Each shipped Role's lease verbs must equal both.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml

from k8s.test_chart import _Recording, _rules
from k8s.test_rbac_pool_groups_k8s27 import _until, pool, shipped_roles
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.runtime import KubeOptions, KubePool

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "kvgate"
LEASE = ("coordination.k8s.io", "leases")
RBAC_VERB = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _lease_verbs(role: dict[str, Any]) -> set[str]:
    return {v for g, r, v in _rules(role) if (g, r) == LEASE}


def all_shipped_roles() -> dict[str, dict[str, Any]]:
    roles = shipped_roles()  # the chart's and deploy/kvgate-epp.yaml's
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kvgate-epp-v1alpha2.yaml").read_text()) if d]
    [roles["manifest-v1alpha2"]] = [d for d in docs if d["kind"] == "Role"]
    return roles


def code_lease_verbs() -> set[str]:
    """The RBAC verb of every request method ``kvgate.k8s.lease`` sends (a GET there reads one object)."""
    tree = ast.parse((SRC / "k8s" / "lease.py").read_text())
    methods = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "request"
        and node.args and isinstance(node.args[0], ast.Constant)
    }  # fmt: skip
    assert methods, "no request found in kvgate/k8s/lease.py"
    return {RBAC_VERB[m] for m in methods}


def test_lease_module_is_the_only_one_that_touches_leases() -> None:
    """Else the code view above would miss a caller (``R.LEASE``: defined in resources.py, used in
    lease.py; the double serves it)."""
    users = sorted(
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
        if p.name not in ("lease.py", "resources.py", "apiserver.py") and "LEASE." in p.read_text()
    )  # fmt: skip
    assert users == []


def test_each_shipped_role_grants_on_leases_exactly_what_the_code_calls() -> None:
    want = code_lease_verbs()
    assert want == {"get", "create", "update"}  # (what client-go's leaderelection needs too)
    got = {name: _lease_verbs(role) for name, role in all_shipped_roles().items()}
    assert got == dict.fromkeys(got, want)


async def test_each_shipped_role_grants_on_leases_exactly_what_an_election_uses() -> None:
    async with _Recording() as d:
        d.create(pool(R.INFERENCE_POOL.group))
        d.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0", "labels": {"app": "vllm"}}})
        d.set_pod_status("p0", ip="10.0.0.7", ready=True)
        # A Lease another holder left: taken over once it has not changed for its (1 s) duration.
        d.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                  "metadata": {"name": "kvgate-epp-llm", "namespace": "default"},
                  "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 1,
                           "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 0}})  # fmt: skip
        opts = KubeOptions("llm", "default", server=d.url, leader_election=True, retry_period_s=0.2)
        kp = KubePool(opts, EndpointStore(), on_policy=lambda _o, _r: None)
        await kp.start()
        try:
            await _until(lambda: kp.problem() is None, f"leading (last: {kp.problem()})")
        finally:
            await kp.stop()  # releases it (update)
        d.delete(R.LEASE, "kvgate-epp-llm", "default")
        kp = KubePool(opts, EndpointStore(), on_policy=lambda _o, _r: None)
        await kp.start()
        try:  # no Lease: created
            await _until(lambda: kp.problem() is None, f"leading again (last: {kp.problem()})")
        finally:
            await kp.stop()
    used = {v for g, r, v in d.used if (g, r) == LEASE}
    assert used == {"get", "create", "update"}
    got = {name: _lease_verbs(role) for name, role in all_shipped_roles().items()}
    assert got == dict.fromkeys(got, used)
