"""The double applies the CRD rules (``kvgate.k8s.crdrules``) on update too, as a real API server does
(k8s17; session 16's closing note: "the double checks CRD rules on create only"): a PUT, a merge or JSON
patch and a ``kubectl apply`` that put ``additionalProperties`` beside ``properties`` are refused with the
create's ``422 Invalid`` (message and causes), and the stored CRD is unchanged; the approval annotation
of a protected group is checked only where an update changes its state (missing, ``unapproved...``, a
URL, invalid), as upstream's ``validateAPIApproval`` ratchets it. Every answer here was read from a real
kube-apiserver 1.20.2 first; ``tests/k8s_real`` compares the two servers on the same updates."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble

from .conftest import Kubectl
from .test_apiserver_crd_rules import PATH, SPEC_CLOSED, crd, obj

SPEC_OPEN = obj(spec=obj(n={"type": "integer"}))
URL = "https://github.com/kubernetes/enhancements/pull/1111"
MERGE, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"
FORBIDDEN = (
    "spec.validation.openAPIV3Schema.properties[spec].additionalProperties: "
    "Forbidden: additionalProperties and properties are mutual exclusive"
)
ENHANCEMENT = "see https://github.com/kubernetes/enhancements/pull/1111"
REQUIRED = (
    "metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval "
    f'annotation "api-approved.kubernetes.io", {ENHANCEMENT}'
)
INVALID_YES = (
    'metadata.annotations[api-approved.kubernetes.io]: Invalid value: "yes": protected groups must have '
    'approval annotation "api-approved.kubernetes.io" with either a URL or a reason starting with '
    f'"unapproved", {ENHANCEMENT}'
)


def invalid(name: str, *errs: str) -> str:
    listed = errs[0] if len(errs) == 1 else f"[{', '.join(errs)}]"
    return f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: {listed}'


async def _send(
    double: ApiServerDouble, method: str, name: str, body: Any, ctype: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{double.url}{PATH}/{name}", data=orjson.dumps(body),
                  headers={"Content-Type": ctype}) as r,
    ):  # fmt: skip
        return r.status, await r.json()


def _closing_merge() -> dict[str, Any]:
    version = {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": SPEC_CLOSED}}
    return {"spec": {"versions": [version]}}


def _approval(value: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {"api-approved.kubernetes.io": value}}}


async def test_a_patch_or_put_that_closes_a_schema_is_refused_as_on_create(double: ApiServerDouble) -> None:
    """Fails before: every update was taken (the rules ran on create only)."""
    name = "widgets.example.com"
    double.create(crd("example.com", SPEC_OPEN))
    stored = double.get(R.CRD, name, None)
    json_patch = [
        {
            "op": "add",
            "value": False,
            "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/additionalProperties",
        }
    ]
    put = {**stored, "spec": {**stored["spec"], "versions": _closing_merge()["spec"]["versions"]}}
    for method, body, ctype in [("PATCH", _closing_merge(), MERGE), ("PATCH", json_patch, JSON_PATCH),
                                ("PUT", put, "application/json")]:  # fmt: skip
        code, answer = await _send(double, method, name, body, ctype)
        assert (code, answer["reason"], answer["message"]) == (422, "Invalid", invalid(name, FORBIDDEN)), (
            method, ctype, answer)  # fmt: skip
        assert [c["reason"] for c in answer["details"]["causes"]] == ["FieldValueForbidden"]
    assert double.get(R.CRD, name, None) == stored  # nothing stored


async def test_kubectl_apply_of_a_closed_schema_is_refused(double: ApiServerDouble, kubectl: Kubectl) -> None:
    double.create(crd("example.com", SPEC_OPEN))
    out = await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(crd("example.com", SPEC_CLOSED)),
                            check=False)  # fmt: skip
    assert "mutual exclusive" in out and "is invalid" in out, out


@pytest.mark.parametrize(
    ("patch", "code", "message"),
    [(_approval(None), 422, REQUIRED), (_approval("yes"), 422, INVALID_YES),
     (_approval("https://example.com/review"), 200, None), (_approval("unapproved, testing"), 200, None),
     ({"metadata": {"labels": {"a": "b"}}}, 200, None),
     ({**_approval(None), **_closing_merge()}, 422, None)],
    ids=["approval-removed", "approval-invalid", "another-url", "unapproved", "approval-untouched", "both"],
)  # fmt: skip
async def test_a_protected_groups_approval_is_checked_when_an_update_changes_it(
    double: ApiServerDouble, patch: dict[str, Any], code: int, message: str | None
) -> None:
    name = "widgets.x.k8s.io"
    double.create(crd("x.k8s.io", SPEC_OPEN, {"api-approved.kubernetes.io": URL}))
    got, answer = await _send(double, "PATCH", name, patch, MERGE)
    assert got == code, answer
    if code == 422:
        both = invalid(name, FORBIDDEN, REQUIRED)  # (the schema's cause first, as the real server lists)
        assert answer["message"] == (invalid(name, message) if message else both), answer


async def test_a_crd_stored_without_approval_may_be_updated_while_it_stays_so(
    double: ApiServerDouble,
) -> None:
    """Upstream ratchets the approval rule: a CRD stored with no annotation (a v1beta1 create does that on a
    real server; put in the store here) is updated as long as the annotation stays missing, and refused
    when an update makes it invalid."""
    name = "widgets.old.k8s.io"
    unapproved = crd("old.k8s.io", SPEC_OPEN)
    unapproved["metadata"]["annotations"] = {"api-approved.kubernetes.io": "unapproved, for the store"}
    double.create(unapproved)
    double._bucket(R.CRD)[("", name)]["metadata"].pop("annotations")  # (as a v1beta1 create stores it)
    code, answer = await _send(double, "PATCH", name, {"metadata": {"labels": {"a": "b"}}}, MERGE)
    assert code == 200, answer
    code, answer = await _send(double, "PATCH", name, _approval("yes"), MERGE)
    assert (code, answer["message"]) == (422, invalid(name, INVALID_YES))
