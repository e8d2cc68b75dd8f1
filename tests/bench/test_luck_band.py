"""``scripts/luck_band.py``'s two kinds of moved pick: ``after`` sends the request elsewhere behind the
picker's back (its state still says the first replica), ``picker`` moves the picker's own choice (its
state records the moved one). sglang cache_aware's model shows the difference: it follows its tree, so a
session's next turn goes where its tree says the first turn went. For kvgate, every post-pick hook (prefix
index, cost scorer) learns the replica the request went to under ``picker`` (review s14-mt L5).
``scripts/pick_divergence.py`` counts the measured bursts it reports cold bursts of (review s14-mt L2)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from luck_band import moved_sim
from pick_divergence import replay

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


def _hook_vs_dispatch(move: str, k: int) -> list[tuple[str, str, str]]:
    """(request id, hook, address the hook learned) for every kvgate post-pick hook call whose address
    is not the replica the request was dispatched to (review s14-mt's test)."""
    sim = moved_sim(FAM, "kvgate", 6.0, 7, k, move, duration=10.0, warmup=2.0)
    (profile,) = sim.director.profiles.values()
    assert profile.post_pick, "kvgate's profile runs post-pick hooks"
    learned: dict[str, list[tuple[str, str]]] = {}
    for hook in profile.post_pick:
        orig = hook.on_picked

        def on_picked(cycle: Any, endpoint: Any, _orig: Any = orig, _name: str = hook.name) -> None:
            learned.setdefault(cycle.request.request_id, []).append((_name, endpoint.address))
            _orig(cycle, endpoint)

        hook.on_picked = on_picked  # type: ignore[method-assign]
    sent: dict[str, str] = {}
    arrive = sim._arrive

    def watch(spec: Any) -> None:
        rid = f"r{sim._n}"
        arrive(spec)
        live = sim._live.get(rid)
        if live is not None:
            sent[rid] = sim.endpoints[live.index].address

    sim._arrive = watch  # type: ignore[method-assign]
    sim.run()
    assert sent
    return [(rid, h, a) for rid, calls in learned.items() for h, a in calls if rid in sent and a != sent[rid]]


def test_picker_move_reaches_kvgate_post_pick_hooks() -> None:
    assert _hook_vs_dispatch("picker", 1) == []


def test_after_move_is_hidden_from_kvgate_hooks() -> None:
    # The contrast that makes the test above able to fail: `after` hides exactly one request's move.
    wrong = _hook_vs_dispatch("after", 1)
    assert wrong and len({rid for rid, _, _ in wrong}) == 1


def test_pick_divergence_counts_the_measured_bursts() -> None:
    # A tenant's bursts arrive on the workload's clock, not the routing's: every replay has the same
    # measured bursts, and the cold ones are some of them.
    plain = replay(FAM, "sglang-cache-aware", 6.0, 7, 0, "after", duration=10.0, warmup=2.0)
    moved = replay(FAM, "kvgate", 6.0, 7, 1, "picker", duration=10.0, warmup=2.0)
    assert plain["bursts"] > 0
    assert plain["bursts"] == moved["bursts"]
    assert 0 <= plain["cold"] <= plain["bursts"] and 0 <= moved["cold"] <= moved["bursts"]
