"""``scripts/fc_step_share_trials.py`` (issue #15, fc29): the late-pick trials' pure parts, on synthetic
endpoints and outcomes. No simulation and no patch of the Director here (``patch`` is process-wide: a
test that called it would change every later test in the process)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_step_share_trials as fst

from kvgate.bench.flowcontrol_bench import FLOOD, Outcome
from kvgate.requestcontrol.director import Director


def _ep(address: str, requests: int, decoding: int) -> SimpleNamespace:
    return SimpleNamespace(address=address, inflight=SimpleNamespace(requests=requests, decoding=decoding))


def _det(max_pending: int = 2, max_requests: int = 128) -> SimpleNamespace:
    return SimpleNamespace(max_pending=max_pending, max_requests=max_requests)


@pytest.fixture(autouse=True)
def _state():  # type: ignore[no-untyped-def]
    trial, marked = fst.State.trial, dict(fst.State.marked)
    fst.State.marked.clear()
    yield
    fst.State.trial = trial
    fst.State.marked.clear()
    fst.State.marked.update(marked)


@pytest.mark.parametrize(("trial", "kept"), [("servers", 2), ("servers-floor", 2), ("servers-ceil", 3)])
def test_servers_kept_clean_round_floor_ceil(trial: str, kept: int) -> None:
    fst.State.trial = trial
    assert fst.keep_clean(4, 0.6) == kept


def test_servers_open_fills_held_servers_and_keeps_clean_ones() -> None:
    fst.State.trial = "servers"  # 4 x 0.5 = 2 servers kept with nothing pending
    a, b, c, d = _ep("a", 10, 9), _ep("b", 10, 8), _ep("c", 10, 10), _ep("d", 10, 10)
    fst.State.marked[("r1", "a")] = None  # a: one held-back request pending, room for one more
    fst.State.marked[("r2", "b")] = None  # b: two pending, one of them not held back: not open
    # c, d clean: taking one would leave one clean, under the two kept
    assert [ep.address for ep in fst.servers_open(_det(), [a, b, c, d], 0.5)] == ["a"]
    # with a third clean server one of the clean ones may be taken (two stay clean)
    e = _ep("e", 10, 10)
    assert [ep.address for ep in fst.servers_open(_det(), [a, b, c, d, e], 0.5)] == ["a", "c", "d", "e"]
    # at the pending bound a held server is full
    fst.State.marked[("r3", "a")] = None
    full = _ep("a", 10, 8)
    assert [ep.address for ep in fst.servers_open(_det(), [full, c, d], 0.5)] == []


def test_cycle_counts_flood_hits_backlog_and_quiet_over_the_line() -> None:
    args = argparse.Namespace(duration=30.0, warmup=10.0)
    outs = [
        Outcome(FLOOD, 10.2, ttft=0.5, sent=10.3),  # sent in second 0, a hit
        Outcome(FLOOD, 10.4, ttft=15.0, sent=25.0),  # a miss: not counted; queued at 20 s
        Outcome("t1", 15.5, ttft=0.09, sent=15.5),  # quiet, over a 0.06 line, second 5
        Outcome("t2", 12.0, ttft=0.03, sent=12.0),  # quiet, under it
        Outcome("t3", 21.0, status=503),  # quiet, shed: over it, second 1; no backlog
    ]
    c = fst.cycle(SimpleNamespace(outcomes=outs), args, 0.06)
    assert c["flood_hit"][0] == pytest.approx(0.5)  # one over two cycles
    assert sum(c["flood_hit"]) == pytest.approx(0.5)
    assert c["backlog"] == [0, 1]
    assert c["quiet_over"][5] == 1 and c["quiet_over"][1] == 1 and sum(c["quiet_over"]) == 2


def test_an_unknown_trial_is_refused_before_anything_is_patched() -> None:
    pick = Director._pick_late
    with pytest.raises(SystemExit):
        fst.main(["--trials", "shipped,no-such-trial"])
    assert Director._pick_late is pick
