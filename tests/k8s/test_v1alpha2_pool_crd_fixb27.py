"""The v1alpha2 InferencePool CRD the tests install (tests/k8s/v1alpha2_pool.py) refuses what upstream's
v1alpha2 CRD refuses (GIE v0.x config/crd/bases/inference.networking.x-k8s.io_inferencepools.yaml:
``extensionRef`` required, ``extensionRef.portNumber`` 1-65535): a chart that dropped ``extensionRef`` or
rendered port 0 passed test_chart_v1alpha2_k8s27's schema check and the real API server, and a cluster with
upstream's CRD would refuse it (review s27-rev-b27 F3). 4 of 5 fail on bfadf538."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from k8s.v1alpha2_pool import spec_schema
from kvgate.k8s import crdrules

GOOD: dict[str, Any] = {
    "selector": {"app": "vllm"},
    "targetPortNumber": 8000,
    "extensionRef": {"name": "llm-epp", "portNumber": 9002, "failureMode": "FailClose"},
}


def _check(spec: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(crdrules.closed(spec_schema())).validate(spec)


def test_a_pool_as_upstream_takes_it_is_valid() -> None:
    _check(GOOD)


@pytest.mark.parametrize(
    "spec",
    [{k: v for k, v in GOOD.items() if k != "extensionRef"},
     {**GOOD, "extensionRef": {**GOOD["extensionRef"], "portNumber": 0}},
     {**GOOD, "extensionRef": {**GOOD["extensionRef"], "portNumber": 65536}},
     {**GOOD, "extensionRef": {**GOOD["extensionRef"], "name": ""}}],
    ids=["no-extensionRef", "port-0", "port-65536", "empty-name"],
)  # fmt: skip
def test_what_upstreams_v1alpha2_crd_refuses_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        _check(spec)
