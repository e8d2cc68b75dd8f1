"""rev-docs31: docs truth checks for session 31 (each fails on main ad2c0cca, the review's read).

Text only: no server, no subprocess. Whitespace is normalised so a rewrap does not matter.
Runnable from the review folder (reads /work/main) or as tests/test_docs_truth_rev_docs31.py.
"""

from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("KVGATE_ROOT", _HERE if (_HERE / "src/kvgate").is_dir() else "/work/main"))


def _text(rel: str) -> str:
    return " ".join((ROOT / rel).read_text().split())


def _cap_503_has_no_retry_after() -> bool:
    server = (ROOT / "src/kvgate/httpfront/server.py").read_text()
    at = server.index('"too_many_connections")')
    return "_head(resp.status, {}," in server[at : at + 200]  # (no headers: no Retry-After)


def test_f3_gateway_503_row_names_the_503s_without_retry_after() -> None:
    """The connection cap's 503 (httpfront, before a request is read) carries no Retry-After
    (fo31's CHANGELOG and hardening.md say so); gateway.md's status table says every 503 does."""
    if not _cap_503_has_no_retry_after():
        return  # (fixed in the code instead: the claim is true)
    gw = _text("docs/gateway.md")
    claim = "every 503 the gateway makes carries `Retry-After: 1` unless its cause gives another"
    if claim in gw:
        row = gw[gw.index(claim) : gw.index(claim) + 600]
        assert "too_many_connections" in row or "connection cap" in row


def test_f4_hub_503_says_which_have_no_retry_after() -> None:
    if not _cap_503_has_no_retry_after():
        return
    mc = _text("docs/multicluster.md")
    assert "with `Retry-After: 1`, as every 503 the hub makes since fo31)" not in mc


def test_f5_hub_cut_json_reply_is_held_not_aborted() -> None:
    """Since fo31 (c6ebb662) a non-streamed reply within the 4 MiB hold is held whole and a cut one moves
    on; multicluster.md's limits paragraph still says a cut JSON reply aborts the connection."""
    mc = _text("docs/multicluster.md")
    stale = "(a cut JSON reply aborts the connection, so the client never takes a short body for a whole one)"
    assert stale not in mc


def test_f6_baseline_policy_files_do_not_say_the_flip_landed() -> None:
    """fam31's flip did not land (check 1 failed): the 'before' policy files' comments say session 31
    turned the keys on."""
    for rel in (
        "docs/benchmarks/policies/kvgate-before-cold-spread-decode.yaml",
        "docs/benchmarks/policies/kvgate-precise-before-cold-spread-decode.yaml",
    ):
        head = (ROOT / rel).read_text().splitlines()[0]
        assert "before session 31 (fam31) turned on" not in head, rel


def test_f7_benchmarks_summary_has_session_31s_real_vllm_result() -> None:
    """rv31 landed §4.20 (seeds 45-47, pooled over seeds 28-47: 28 of 40, run geomeans 15 of 20), but
    docs/benchmarks.md's real-vLLM summary row still ends at session 30's pooled count (seeds 28-44)."""
    lines = (ROOT / "docs/benchmarks.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith("| vs sglang-router cache_aware, 8 tenants x 5"))
    assert "#420-session-31" in row or "seeds 28-47" in row, "no session 31 in the summary row"


def test_f8_changelog_names_commits_on_main() -> None:
    """rv31's section says its test fails on 0c390ab4, the pre-registration's pre-rebase commit (not on
    main; on main it is 1a324798), as rev-docs30 D7 found for tok30."""
    assert "(fails on 0c390ab4" not in _text("CHANGELOG.md")


def test_f9_changelog_session_31_says_nothing_twice() -> None:
    """7b7f167a's union merge brought back fixqa31a's first heading and Q6 bullet
    ("### Fixed: discovery, one pod's odd `active-ports` value ...") below tok31's sections, while the same Q6
    text already stands in fixqa31a's renamed section at the top (ad2c0cca)."""
    import collections
    import re

    text = (ROOT / "CHANGELOG.md").read_text()
    unreleased = text.split("## [Unreleased]", 1)[1]
    sections = re.split(r"\n(?=### )", unreleased)
    session = []
    for sec in sections[1:]:
        if "(fixrevd30)" in sec.split("\n", 1)[0]:
            break  # (session 30's sections start here)
        session.append(sec)
    counts: collections.Counter[str] = collections.Counter()
    for sec in session:
        body = " ".join(sec.split("\n", 1)[1].split()) if "\n" in sec else ""
        counts.update(s for s in re.split(r"(?<=[.;:])\s", body) if len(s) > 80)
    assert not [s for s, n in counts.items() if n > 1]


def test_f11_kubernetes_readiness_says_a_multi_pool_serve_stays_ready() -> None:
    """Since c9190657 (fixqa31b Q4) a multi-pool `kvgate serve` answers 200 `ready; pool NAME: PROBLEM`
    while another pool serves; kubernetes.md's staleness and 403 bullets still say `/readyz` answers 503."""
    server = (ROOT / "src/kvgate/gateway/server.py").read_text()
    if '"ready" + others' not in server:
        return  # (Q4 not on this tree)
    kube = _text("docs/kubernetes.md")
    assert "ready; pool" in kube or "s31-qa31 Q4" in kube
