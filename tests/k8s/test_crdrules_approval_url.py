"""s16-kreal: crdrules' approval-URL check is not upstream's.

apiextensions-apiserver 1.20.2 (staging/.../apihelpers/helpers.go GetAPIApprovalState, the source
scripts/real-apiserver.sh builds from) approves only when ``url.ParseRequestURI`` succeeds AND
``len(url.Host) > 0 && len(url.Scheme) > 0``. crdrules uses ``urlparse(...).scheme and .netloc``:
netloc includes userinfo, and urlparse accepts hosts Go refuses. Checked with go1.19's net/url here:
"https://user@/review" -> Host "" -> Invalid; "http://exa mple.com/x" -> parse error -> Invalid.
Both are approved by crdrules (the double takes a CRD the real server refuses with 422).
Run: PYTHONPATH=src python -m pytest -q /work/team/reviews/s16-kreal-tests/test_crdrules_approval_url.py
"""

import pytest

from kvgate.k8s import crdrules


def crd(value: str) -> dict:
    return {"metadata": {"name": "widgets.x.k8s.io", "annotations": {crdrules.APPROVAL: value}},
            "spec": {"group": "x.k8s.io", "versions": []}}  # fmt: skip


@pytest.mark.parametrize("value", ["https://user@/review", "http://exa mple.com/x"])
def test_an_approval_the_real_server_finds_invalid_is_refused(value: str) -> None:
    got = crdrules.causes(crd(value))
    assert [c["reason"] for c in got] == ["FieldValueInvalid"], got


@pytest.mark.parametrize("value", ["https://github.com/kubernetes/enhancements/pull/1111", "https://:443",
                                   "unapproved, testing"])  # fmt: skip
def test_what_upstream_approves_stays_approved(value: str) -> None:
    assert crdrules.causes(crd(value)) == []
