"""Review s28-rev-a28 F5 (fixa28): docs/benchmarks.md's flow-control row (the index a reader sees first)
ended #15's story at session 26's confirmation on seeds 82-84; session 28's pre-registered confirmation on
fresh seeds 85-87 (goals 6 / 6 / 5 of 6 at --ttl 1000, 6 / 6 / 4 of 6 at 30 s; fc28's reading of unanswered
requests) was in docs/benchmarks/flowcontrol.md only. The row names it and links its section, whose heading
must exist. Fails on main 516bac94. No process, no timing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = (
    "session-28-confirmation-the-shipped-order-on-fresh-seeds-85-87-the-reading-with-unanswered-requests-fc28"
)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_benchmarks_index_names_session_28s_confirmation() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    start = text.index("[flow control](benchmarks/flowcontrol.md)")
    row = text[start : text.index("[multi-cluster](benchmarks/multicluster.md)", start)]
    assert "85-87" in row, "docs/benchmarks.md's flow-control row does not name the s28 confirmation"
    assert f"(benchmarks/flowcontrol.md#{ANCHOR})" in row
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "benchmarks" / "flowcontrol.md").read_text(), re.M)
    assert ANCHOR in {_anchor(h) for h in headings}
