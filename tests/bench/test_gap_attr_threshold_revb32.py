"""Review rev-b32 F5: ``scripts/gap_attr_s32.py`` with ``--at=MS`` printed the fixed threshold where B's
p90 belongs ("p90 A 496 ms, B 300 ms" on c / 105, where sglang's model's p90 is 185 ms) and called it
"B's p90". The per-seed line now prints both p90s and the threshold ``T`` with where it came from.
Fails on ad5491cb (no ``seed_line``; the line was formatted inline)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from gap_attr_s32 import seed_line


def test_with_at_the_line_prints_b_s_own_p90_and_the_fixed_threshold() -> None:
    ca = Counter({("burst-warm", "miss"): 70, ("turn1", "compute"): 3})
    cb = Counter({("burst-warm", "queued"): 47})
    line = seed_line(105, 0.496, 0.185, 0.300, True, ca, cb, 620, {"burst-warm": 23, "turn1": 3})
    assert line.startswith(
        "seed 105: p90 A 496 ms, B 185 ms; at or over T = 300 ms (--at): A 73, B 47 of 620"
    )
    assert "B's p90" not in line


def test_without_at_the_threshold_is_b_s_p90() -> None:
    line = seed_line(110, 0.506, 0.323, 0.323, False, Counter(), Counter(), 572, {})
    assert line.startswith(
        "seed 110: p90 A 506 ms, B 323 ms; at or over T = 323 ms (B's p90): A 0, B 0 of 572"
    )
