"""``scripts/fc_miss_pairs.py``: two flow-control arms' outcomes paired request by request, and
``scripts/fc_quiet_steps.py``: the prefills in a quiet request's first step (issue #15, fc27's trace of
4 x 128 seed 83). Synthetic outcomes, and one short 2 x 16 run."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_miss_pairs as fmp
import fc_quiet_steps as fqs

from kvgate.bench.flowcontrol_bench import BATCH, FLOOD, QUIET, FlowSim, Mix, Outcome, rates


def _o(tenant: str, start: float, ttft: float | None, sent: float | None, status: int = 0) -> Outcome:
    return Outcome(tenant, start, ttft=ttft, status=status, sent=sent)


def test_pairs_split_by_winner_with_where_the_loser_waited() -> None:
    # flood request 1: A serves it at once (hit), B holds it 20 s in its queue (miss)
    # flood request 2: A's server queue makes it late (miss), B sends it just in time (hit)
    # quiet request: both hit; one before the warmup: not measured
    a = [
        _o(FLOOD, 5.0, 2.0, 5.0),
        _o(FLOOD, 10.5, 0.2, 10.5),
        _o(FLOOD, 13.2, 1.5, 13.7),
        _o("t1", 14.0, 0.1, 14.0),
    ]
    b = [
        _o(FLOOD, 5.0, 0.1, 5.0),
        _o(FLOOD, 10.5, 20.04, 30.5),
        _o(FLOOD, 13.2, 0.95, 14.1),
        _o("t1", 14.0, 0.04, 14.0),
    ]
    rows = fmp.compare(a, b, warmup=10.0)
    f = rows["flood"]
    assert (f["requests"], f["hits_a"], f["hits_b"], f["a_only"], f["b_only"]) == (2, 1, 1, 1, 1)
    assert f["a_only_b_queue"] == pytest.approx(20.0)
    assert f["a_only_b_server"] == pytest.approx(0.04)
    assert f["a_only_b_queue_over_slo"] == 1
    assert f["b_only_a_queue"] == pytest.approx(0.5)
    assert f["b_only_a_server"] == pytest.approx(1.0)
    assert rows["quiet"]["a_only"] == rows["quiet"]["b_only"] == 0
    assert rows["by_cycle_second"]["a_only"][0] == 1  # arrived 10.5 s: second 0 of the cycle
    assert rows["by_cycle_second"]["b_only"][3] == 1


def test_a_shed_request_is_a_miss() -> None:
    a = [_o(BATCH, 12.0, 3.0, 12.0)]
    b = [_o(BATCH, 12.0, None, None, status=503)]
    rows = fmp.compare(a, b, warmup=10.0)
    assert rows["batch"]["a_only"] == 1
    assert rows["batch"]["a_only_b_shed_or_unfinished"] == 1


def test_dispatches_backlog_and_drain() -> None:
    outs = [
        _o(FLOOD, 10.2, 0.5, 10.3),  # sent in second 0, a hit
        _o(FLOOD, 10.4, 15.0, 25.0),  # sent at 25 s (second 5), a miss; queued at 20 s
        _o("t2", 19.5, 0.1, 21.0),  # another tenant, sent in second 1; queued at 20 s
        _o(FLOOD, 19.0, None, None, status=503),  # shed: no backlog
    ]
    d = fmp.dispatches(outs, warmup=10.0, duration=30.0)
    assert d["flood_hit"][0] == pytest.approx(0.5)  # one over two cycles
    assert d["flood_miss"][5] == pytest.approx(0.5)
    assert d["other"][1] == pytest.approx(0.5)
    assert d["backlog"] == [0, 2]
    assert d["last_first_token_s"] == pytest.approx(25.4)


def test_arms_must_see_the_same_arrivals() -> None:
    with pytest.raises(AssertionError):
        fmp.compare([_o(FLOOD, 11.0, 0.1, 11.0)], [_o("t1", 11.0, 0.1, 11.0)], warmup=10.0)


def test_quiet_steps_counts_every_measured_quiet_request() -> None:
    """``scripts/fc_quiet_steps.py``: each measured quiet request with a first token is counted once,
    under the prefills of the step it started in (>= 1: its own), on a short 2 x 16 run."""
    argv = ["--seed", "3", "--replicas", "2", "--max-num-seqs", "16", "--duration", "12", "--warmup", "2"]
    args = fqs.parser().parse_args(argv)
    by = fqs.quiet_by_prefills(args)
    assert by and min(by) >= 1
    # the same run without the step hook: the same quiet requests got a first token
    _cap, base = rates(2, args.profile, 3, 16, args.load, 12.0)
    sim = FlowSim(
        args.arm, 2, args.profile, 3, args.ttl, max_num_seqs=16, max_pending=2, headroom=0.75,
        headroom_on="pending", ttft_target=0.05, running_reserve=True,
    )  # fmt: skip
    run = sim.simulate(Mix(base, "flood", 12.0).arrivals(random.Random(3)), 72.0)
    served = sorted(o.ttft for o in run.outcomes if o.start >= 2 and o.tenant in QUIET and o.ttft is not None)
    assert sorted(t for v in by.values() for t in v) == served
