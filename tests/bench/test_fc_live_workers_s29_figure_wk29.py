"""Session 29's `--workers 2` figure (wk29, docs/benchmarks/flowcontrol.md, Session 29): the seeds' ratios
and their geometric mean as published, recomputed from the raw runs by ``fc_live_ratio_interval``'s
``--goal`` reading (no bootstrap: exact, no timing). Fails before the runs were committed (no raw data)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "docs" / "benchmarks" / "flowcontrol-workers-s29"
DOC = ROOT / "docs" / "benchmarks" / "flowcontrol.md"

sys.path.insert(0, str(ROOT / "scripts"))

import fc_live_ratio_interval as ri  # noqa: E402


def test_the_published_ratios_are_the_raw_runs() -> None:
    doc = DOC.read_text()
    logs = []
    for seed, published in ((83, "1.362"), (84, "1.478"), (85, "1.254")):
        calm, flood = (json.loads((RAW / f"seed-{seed}-{mix}-w2" / "flowcontrol-live.json").read_text())
                       for mix in ("calm", "flood"))  # fmt: skip
        pairs = ri.matched_goal(calm, flood, 5.0)
        ratio = ri.goal_ratio(pairs)
        assert f"{ratio:.3f}" == published
        assert f"| {seed} | {len(pairs)} of {len(pairs)} |" in doc
        logs.append(math.log(ratio))
    assert f"{math.exp(sum(logs) / 3):.3f}" == "1.362"
    assert "1.362x, two-level 90 % interval 1.195-1.486" in doc
