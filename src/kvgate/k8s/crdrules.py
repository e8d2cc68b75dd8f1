"""Two rules a real API server applies to a CustomResourceDefinition that a check of the CRD's own shape
(kubernetes-validate, a JSON schema of the kind) does not see.

Both from apiextensions-apiserver's CRD validation (``pkg/apis/apiextensions/validation``, the same in 1.20
and in current Kubernetes); a real kube-apiserver 1.20.2 refused every CRD in deploy/crds for them while the
API-server double and the offline schema check took them:

- a schema node with ``properties`` must not carry ``additionalProperties`` too, unless it is ``true``
  ("properties are for structs, additionalProperties for maps"): ``Forbidden: additionalProperties and
  properties are mutual exclusive``. A closed object needs no ``additionalProperties: false``: a
  structural schema prunes every field it does not list (``closed`` below is that pruning as an offline
  check sees it);
- a CRD in a protected group (``k8s.io``, ``*.k8s.io``, ``kubernetes.io``, ``*.kubernetes.io``) must carry
  the ``api-approved.kubernetes.io`` annotation: a URL (its API review) or a reason starting with
  ``unapproved``.

``refusal`` gives the causes as the real server's ``422 Invalid`` Status lists them. On an update (PUT,
any PATCH, server-side apply: ``old`` given) the schema rule applies as on a create, and the annotation's
only when the update changes its state (missing, ``unapproved...``, a URL, anything else), as
``validateAPIApproval`` ratchets it: a CRD stored without approval (a v1beta1 create) may still be updated
as long as its annotation stays missing (checked against a real 1.20.2 server, k8s17).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

APPROVAL = "api-approved.kubernetes.io"
# ASCII a Go net/url host may hold unescaped (url.go shouldEscape, encodeHost) plus '%' (an escape)
_HOST_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]<>\"%"
)


def _approval_url(value: str) -> bool:
    """Upstream's URL approval (apihelpers.GetAPIApprovalState): ``url.ParseRequestURI`` succeeds and
    both ``Scheme`` and ``Host`` are non-empty. Go's ``Host`` is the authority without userinfo (port
    kept: ``https://:443`` has one); a control character anywhere or a space in the host fails the parse."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    host = parts.netloc.rpartition("@")[2]
    return bool(parts.scheme and host and all(c in _HOST_ASCII for c in host if ord(c) < 0x80))


_ENHANCEMENT = "see https://github.com/kubernetes/enhancements/pull/1111"
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SUBSCHEMA_MAPS = ("properties", "definitions", "dependencies", "patternProperties")


def is_protected_group(group: str) -> bool:
    return group in ("k8s.io", "kubernetes.io") or group.endswith((".k8s.io", ".kubernetes.io"))


def _nodes(node: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node under ``node`` (itself first) with its field path as the API server writes it."""
    if not isinstance(node, Mapping):
        return
    yield path, node
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (node.get(key) or {}).items():
            yield from _nodes(sub, f"{path}.{key}[{name}]")
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(node.get(key) or ()):
            yield from _nodes(sub, f"{path}.{key}[{i}]")
    items = node.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            yield from _nodes(sub, f"{path}.items[{i}]")
    else:
        yield from _nodes(items, f"{path}.items")
    yield from _nodes(node.get("additionalProperties"), f"{path}.additionalProperties")
    yield from _nodes(node.get("not"), f"{path}.not")


def _schemas(spec: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Each schema with the path the API server reports: its internal form hoists the versions' schema to
    ``spec.validation`` when every version has the same one (as a real 1.20.2 answers for a v1 CRD)."""
    versions = list(spec.get("versions") or ())
    per_version = [(v.get("schema") or {}).get("openAPIV3Schema") for v in versions]
    if spec.get("validation") is not None:
        return [("spec.validation.openAPIV3Schema", (spec.get("validation") or {}).get("openAPIV3Schema"))]
    if per_version and all(s == per_version[0] for s in per_version):
        return [("spec.validation.openAPIV3Schema", per_version[0])]
    return [(f"spec.versions[{i}].schema.openAPIV3Schema", s) for i, s in enumerate(per_version)]


def approval_state(crd: Mapping[str, Any]) -> str:
    """The ``api-approved.kubernetes.io`` annotation's state (apihelpers.GetAPIApprovalState): ``missing``
    (absent or empty), ``bypassed`` (``unapproved...``), ``approved`` (a URL) or ``invalid``."""
    value = ((crd.get("metadata") or {}).get("annotations") or {}).get(APPROVAL, "")
    if not value:
        return "missing"
    if value.startswith("unapproved"):
        return "bypassed"
    return "approved" if _approval_url(value) else "invalid"


def causes(crd: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """What a real API server refuses in ``crd`` under the two rules, as Status ``details.causes`` (in its
    order: the schema's causes, then the annotation's); ``old``: the stored object ``crd`` updates (the
    annotation's rule then only where its state changes)."""
    out: list[dict[str, str]] = []
    meta, spec = crd.get("metadata") or {}, crd.get("spec") or {}
    for root, schema in _schemas(spec):
        for path, node in _nodes(schema, root):
            extra = node.get("additionalProperties")
            if node.get("properties") and extra is not None and extra is not True:
                message = "Forbidden: additionalProperties and properties are mutual exclusive"
                field = f"{path}.additionalProperties"
                out.append({"reason": "FieldValueForbidden", "field": field, "message": message})
    state = approval_state(crd)
    if is_protected_group(spec.get("group", "")) and (old is None or approval_state(old) != state):
        field = f"metadata.annotations[{APPROVAL}]"
        value = (meta.get("annotations") or {}).get(APPROVAL, "")
        if state == "missing":
            message = f'protected groups must have approval annotation "{APPROVAL}", {_ENHANCEMENT}'
            message = f"Required value: {message}"
            out.append({"reason": "FieldValueRequired", "field": field, "message": message})
        elif state == "invalid":
            message = (f'protected groups must have approval annotation "{APPROVAL}" with either a URL or a '
                       f'reason starting with "unapproved", {_ENHANCEMENT}')  # fmt: skip
            out.append({"reason": "FieldValueInvalid", "field": field,
                        "message": f'Invalid value: "{value}": {message}'})  # fmt: skip
    return out


def refusal(
    crd: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """``(message, details)`` of the real server's ``422 Invalid`` for ``crd`` (an update of ``old``), or
    None if it takes it."""
    found = causes(crd, old)
    if not found:
        return None
    name = (crd.get("metadata") or {}).get("name", "")
    errs = [f"{c['field']}: {c['message']}" for c in found]
    listed = errs[0] if len(errs) == 1 else f"[{', '.join(errs)}]"
    message = f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: {listed}'
    details = {"name": name, "group": "apiextensions.k8s.io", "kind": "CustomResourceDefinition",
               "causes": found}  # fmt: skip
    return message, details


def closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object node that lists ``properties`` and
    no ``additionalProperties``: what a structural schema's pruning does to a field it does not list (drops
    it) becomes an error a JSON-schema validator reports. For offline checks only: a CRD must not ship it.
    """
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: (closed(v) if k not in ("enum", "default", "required", "example") else v)
           for k, v in schema.items()}  # fmt: skip
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out
