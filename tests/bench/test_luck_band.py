"""``scripts/luck_band.py``'s two kinds of moved pick: ``after`` sends the request elsewhere behind the
picker's back (its state still says the first replica), ``picker`` moves the picker's own choice (its
state records the moved one). sglang cache_aware's model shows the difference: it follows its tree, so a
session's next turn goes where its tree says the first turn went."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from luck_band import moved_sim

from kvgate.bench.mixed import FAMILIES

FAM = dataclasses.replace(FAMILIES["c"], turns=(3, 4), think_s=1.0)


def _session_picks(move: str, k: int) -> tuple[dict[str, list[int]], list[str]]:
    """Replica index of every turn per session, and the sessions in order of their first turn."""
    sim = moved_sim(FAM, "sglang-cache-aware", 6.0, 7, k, move, duration=10.0, warmup=2.0)
    picks: dict[str, list[int]] = {}
    order: list[str] = []
    arrive = sim._arrive

    def watch(spec: Any) -> None:
        rid = f"r{sim._n}"
        arrive(spec)
        live = sim._live.get(rid)
        if live is not None and spec.session:
            if spec.session not in picks:
                order.append(spec.session)
            picks.setdefault(spec.session, []).append(live.index)

    sim._arrive = watch  # type: ignore[method-assign]
    sim.run()
    return picks, order


def test_after_moves_one_request_the_picker_never_learns_of() -> None:
    plain, order = _session_picks("after", 0)
    moved, _ = _session_picks("after", 1)
    first = order[0]
    assert len(plain[first]) >= 2
    assert moved[first][0] == (plain[first][0] + 1) % 4
    # sglang's tree still says the first replica: the next turns go there, and nothing else changes.
    assert moved[first][1:] == plain[first][1:]
    assert {s: v for s, v in moved.items() if s != first} == {s: v for s, v in plain.items() if s != first}


def test_picker_moves_the_choice_the_picker_records() -> None:
    plain, order = _session_picks("picker", 0)
    moved, _ = _session_picks("picker", 1)
    first = order[0]
    there = (plain[first][0] + 1) % 4
    assert moved[first][0] == there
    # The tree recorded the moved replica: the session's next turn follows it there.
    assert moved[first][1] == there


def test_unknown_move_is_refused() -> None:
    with pytest.raises(ValueError, match="one of after, picker"):
        moved_sim(FAM, "kvgate", 6.0, 7, 1, "sideways", duration=5.0, warmup=1.0)
