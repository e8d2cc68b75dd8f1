"""``scripts/cold_spread_trace.py``'s session tally: a later turn is charged to the replica its previous
turn went to (where the context was left), and only when no engine held 30% of its prompt."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cold_spread_trace import SessionTally


def test_a_lost_context_is_charged_to_the_replica_that_held_it() -> None:
    t = SessionTally(3)
    t.turn("a", 0, 1000, 0)  # first turn: started on 0, not a loss however cold
    t.turn("b", 2, 800, 0)
    t.turn("a", 1, 2000, 1800)  # moved to 1, context still held: a later turn of 0's, not lost
    t.turn("a", 2, 3000, 500)  # lost (500 < 30% of 3000), sent to 2: charged to 1, where turn 2 left it
    t.turn("b", 2, 1500, 450)  # exactly 30%: held
    assert t.started == [1, 0, 1]  # (turns after the first never count as started)
    assert t.turns == [1, 1, 1]
    assert t.lost == [0, 1, 0]
    assert t.lost_tokens == [0, 3000, 0]
    assert t.lines()[-1] == "  all: context lost 1 of 3 later turns"
