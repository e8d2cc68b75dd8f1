"""The v1alpha2 InferencePool's CRD (GIE v0.x, ``inference.networking.x-k8s.io``): written here from
upstream's v1alpha2 fields for the tests (``spec.selector`` a plain map, one ``spec.targetPortNumber``,
``spec.extensionRef``), with upstream's rules on them (config/crd/bases of GIE v0.x: ``extensionRef``
required, its ``name`` 1-253 characters, ``portNumber`` and ``targetPortNumber`` 1-65535), so that what a
cluster with upstream's CRD refuses is refused here too (review s27-rev-b27 F3). The project ships none in
deploy/crds: a cluster on v1alpha2 pools has upstream's, and ``kubectl create -f deploy/crds/`` (the
docs' install) never replaces an installed CRD."""

from __future__ import annotations

from typing import Any

from kvgate.k8s.resources import LEGACY_GROUP

_EXTENSION_REF = {"type": "object", "required": ["name"], "properties": {
    "group": {"type": "string"}, "kind": {"type": "string"},
    "name": {"type": "string", "minLength": 1, "maxLength": 253},
    "portNumber": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535},
    "failureMode": {"type": "string", "enum": ["FailOpen", "FailClose"]}}}  # fmt: skip
_V1ALPHA2_SPEC = {"type": "object", "required": ["extensionRef", "selector", "targetPortNumber"],
                  "properties": {
    "selector": {"type": "object", "additionalProperties": {"type": "string"}},
    "targetPortNumber": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535},
    "extensionRef": _EXTENSION_REF}}  # fmt: skip
_STATUS = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
V1ALPHA2_POOL_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "inferencepools.inference.networking.x-k8s.io"},
    "spec": {"group": LEGACY_GROUP, "scope": "Namespaced",
             "names": {"kind": "InferencePool", "listKind": "InferencePoolList", "plural": "inferencepools",
                       "singular": "inferencepool"},
             "versions": [{"name": "v1alpha2", "served": True, "storage": True,
                           "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": _V1ALPHA2_SPEC,
                               "status": _STATUS}}}}]}}  # fmt: skip


def spec_schema() -> dict[str, Any]:
    """The pool's ``spec`` schema (what a rendered pool's ``spec`` is validated against)."""
    return _V1ALPHA2_SPEC
