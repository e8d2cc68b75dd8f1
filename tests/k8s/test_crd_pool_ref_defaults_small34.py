"""small34 (c): the shipped InferenceObjective / InferenceModelRewrite CRDs (both API groups) store a
``poolRef`` as upstream's CRDs do: ``group`` defaulted to the object's own CRD's default (``llm-d.ai`` in
``llm-d.ai``, ``inference.networking.k8s.io`` in ``inference.networking.x-k8s.io``: llm-d-router's and GIE's
``config/crd/bases``), ``kind`` to ``InferencePool``, with upstream's lengths and patterns. Session 33 made
the code read a missing group so (``R.POOL_REF_GROUP_DEFAULT``, rev-b33 F1); the CRDs shipped had no
default, so an object applied through them was stored with no group and read by the code's default only.
Here the CRD YAML is tied to the code: what the CRD stores is what ``PoolDiscovery._mine`` reads for an
object with no group. Fails on 72791dce (no default in the files)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from kvgate.k8s import resources as R
from kvgate.k8s.discovery import PoolDiscovery

CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
GROUP_RE = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KIND_RE = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
FILES = [
    f"{plural}.{group}.yaml"
    for plural in ("inferenceobjectives", "inferencemodelrewrites")
    for group in (R.OBJECTIVE_GROUP, R.LEGACY_GROUP)
]


def pool_ref_schema(name: str) -> tuple[str, dict[str, Any]]:
    """(the CRD's group, its one version's ``spec.poolRef`` schema)."""
    crd = yaml.safe_load((CRD_DIR / name).read_text())
    [version] = crd["spec"]["versions"]
    return crd["spec"]["group"], version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "poolRef"
    ]


@pytest.mark.parametrize("name", FILES)
def test_pool_ref_is_stored_as_upstreams(name: str) -> None:
    group, ref = pool_ref_schema(name)
    assert ref["required"] == ["name"]
    p = ref["properties"]
    assert p["group"] == {"type": "string", "default": R.POOL_REF_GROUP_DEFAULT[group], "maxLength": 253,
                          "pattern": GROUP_RE}  # fmt: skip
    assert p["kind"] == {"type": "string", "default": "InferencePool", "minLength": 1, "maxLength": 63,
                         "pattern": KIND_RE}  # fmt: skip
    assert p["name"] == {"type": "string", "minLength": 1, "maxLength": 253}


def test_every_group_the_code_defaults_has_its_crds() -> None:
    groups = {pool_ref_schema(name)[0] for name in FILES}
    assert groups == set(R.POOL_REF_GROUP_DEFAULT) == {R.OBJECTIVE_GROUP, R.LEGACY_GROUP}


@pytest.mark.parametrize("name", FILES)
def test_an_object_with_no_group_reads_as_its_crd_stores_it(name: str) -> None:
    group, ref = pool_ref_schema(name)
    stored = {"spec": {"poolRef": {"name": "p", "group": ref["properties"]["group"]["default"]}}}
    bare = {"spec": {"poolRef": {"name": "p"}}}
    for pool_type in (R.INFERENCE_POOL, R.LEGACY_INFERENCE_POOL):
        watcher = SimpleNamespace(pool_type=pool_type, pool_name="p")
        assert PoolDiscovery._mine(watcher, bare, group) == PoolDiscovery._mine(watcher, stored, group)  # type: ignore[arg-type]
