"""Review rev-a34 F4: an explicit ``poolRef.group: ""`` (admitted by the CRD pattern ``^$|...``, stored as
given: a default applies to a missing field only) names no pool kvgate watches. Upstream's reconcilers
compare the stored group literally (GIE: ``Spec.PoolRef.Group != PoolGKNN.Group``; llm-d-router's
v1alpha2 event predicate alike), so such an objective is not the pool's; before, ``_mine`` read "" as a
missing group and took it. A missing (or null, which the API server prunes and defaults) group still reads
as the object's CRD stores it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kvgate.k8s import resources as R
from kvgate.k8s.discovery import PoolDiscovery


def _mine(pool_type: R.ResourceType, ref: dict[str, Any], group: str) -> bool:
    watcher = SimpleNamespace(pool_type=pool_type, pool_name="p")
    return PoolDiscovery._mine(watcher, {"spec": {"poolRef": ref}}, group)  # type: ignore[arg-type]


@pytest.mark.parametrize("group", [R.OBJECTIVE_GROUP, R.LEGACY_GROUP])
@pytest.mark.parametrize("pool_type", [R.INFERENCE_POOL, R.LEGACY_INFERENCE_POOL])
def test_an_explicit_empty_group_is_no_pools(pool_type: R.ResourceType, group: str) -> None:
    assert _mine(pool_type, {"name": "p", "group": ""}, group) is False
    # (a missing or null group: the CRD's default, which the legacy objective's maps to the v1 pool)
    want = R.POOL_REF_GROUP_DEFAULT[group] == pool_type.group
    assert _mine(pool_type, {"name": "p"}, group) is want
    assert _mine(pool_type, {"name": "p", "group": None}, group) is want
    assert _mine(pool_type, {"name": "p", "group": pool_type.group}, group) is True
