"""Review s28-rev-k8s28 F1 and F3, against the real API server (marker ``k8sreal``):

- F1: ``test_real_apiserver_k8s28.py``'s hub case said each ServiceAccount may do "exactly what the
  controller uses, nothing else", but asked SubjectAccessReview over a 10 resources x 8 verbs grid only: a
  ClusterRole also granting Gateways/HTTPRoutes (every verb) and Events/Endpoints create/delete passed. The
  case now also compares each ServiceAccount's whole rule set (its SelfSubjectRulesReview, less an unbound
  ServiceAccount's) with what the controller uses (``whole_rule_sets_match``); here it must refuse those
  extra grants. Fails on main 0d937292 (no such check: the grid's answers equal the expected set).
- F3: the hub cases left their ClusterRoles and ClusterRoleBindings on the server (the ``finally`` deleted
  pools and imports only): 4-6 cluster-wide objects per run on a server that outlives it
  (``KVGATE_REAL_APISERVER``). Fails on main 0d937292 ("left behind: [clusterrole.../h...-hub, ...]").
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from k8s_real.test_real_apiserver import Kubectl
from k8s_real.test_real_apiserver_k8s28 import (
    expected,
    fresh_namespace,
    hub_render,
    whole_rule_sets_match,
)
from k8s_real.test_real_apiserver_k8s28 import (
    test_the_hub_roles_allow_what_the_controller_does_and_nothing_else as hub_case,
)
from k8s_real.test_real_apiserver_rbac import crds  # noqa: F401 (a fixture, used)

pytestmark = [pytest.mark.k8sreal, pytest.mark.usefixtures("crds")]

EXTRA = [
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways", "httproutes"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["events", "endpoints"], "verbs": ["create", "delete"]},
]


@pytest.mark.timeout(180)
async def test_a_grant_outside_the_grid_is_refused(server: tuple[str, str], tmp_path: Path) -> None:
    ns, k = await fresh_namespace(server[1])
    release = f"h{uuid.uuid4().hex[:8]}"
    docs = hub_render(release, ns, standalone=False)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                             "ClusterRoleBinding")]  # fmt: skip
    [writer] = [d for d in rbac if d["kind"] == "ClusterRole" and d["metadata"]["name"] == f"{release}-hub"]
    writer["rules"] = [*writer["rules"], *EXTRA]
    cluster_wide = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in rbac
                    if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]  # fmt: skip
    try:
        await k.run("apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
        want = expected(ns, f"{ns}-other", standalone=False)
        with pytest.raises(AssertionError, match="hub: granted past its use") as e:
            await whole_rule_sets_match(server[1], ns, release, want, tmp_path)
        for extra in ("gateways", "httproutes", "events", "endpoints"):
            assert f"'{extra}'" in str(e.value), str(e.value)
    finally:
        await k.run("delete", *cluster_wide, "--ignore-not-found", "--wait=false")


async def cluster_rbac(k: Kubectl) -> set[str]:
    out = await k.run("get", "clusterroles,clusterrolebindings", "-o", "name")
    return {line for line in out.splitlines() if line.strip()}


@pytest.mark.timeout(240)
async def test_the_hub_case_leaves_no_cluster_wide_rbac(server: tuple[str, str], tmp_path: Path) -> None:
    k = Kubectl(server[1], "default")
    before = await cluster_rbac(k)
    await hub_case(server, tmp_path, False)
    left = await cluster_rbac(k) - before
    assert left == set(), f"left behind: {sorted(left)}"
