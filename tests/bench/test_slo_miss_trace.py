"""``scripts/slo_miss_trace.py``: each SLO miss's class by the first counterfactual that saves it, the
free-slot time of a wait, and a trace that does not change the run it watches (issue #15, fc15)."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import slo_miss_trace as smt

from kvgate.bench.flowcontrol_bench import FLOOD, FlowSim, Mix, Outcome, rates


def _out(
    ttft: float | None, sent: float | None = 0.0, scheduled: float | None = None, status: int = 0
) -> Outcome:
    return Outcome(FLOOD, 0.0, ttft=ttft, status=status, sent=sent, scheduled=scheduled)


def test_met_is_no_miss() -> None:
    assert smt.classify(_out(0.9, sent=0.5, scheduled=0.6), False, 0.5) is None


def test_shed_and_unfinished() -> None:
    assert smt.classify(_out(None, sent=None, status=503), None, 0.0) == "shed"
    assert smt.classify(_out(None, sent=0.2), False, 0.0) == "unfinished"


@pytest.mark.parametrize(("held", "cls"), [(True, "queue, slot free (held back)"),
                                           (False, "queue, slot free (not held back)")])  # fmt: skip
def test_free_slot_wait_covering_the_excess(held: bool, cls: str) -> None:
    # TTFT 1.3 s against a 1 s SLO: 0.3 s excess; 0.31 s of its 1.0 s wait had a slot free.
    assert smt.classify(_out(1.3, sent=1.0, scheduled=1.05), held, 0.31) == cls


def test_wait_covering_the_excess_with_too_little_free_time_is_capacity() -> None:
    assert smt.classify(_out(1.3, sent=1.0, scheduled=1.05), True, 0.29) == "queue, all busy"


def test_early_dispatch_is_the_server() -> None:
    # Sent after 0.1 s (excess 0.3 s): even sent at arrival it misses. Server queue 0.9 s vs steps 0.3 s.
    assert smt.classify(_out(1.3, sent=0.1, scheduled=1.0), False, 0.1) == "server queue"
    assert smt.classify(_out(1.3, sent=0.1, scheduled=0.3), False, 0.1) == "steps"


def test_free_time_is_piecewise_per_tick() -> None:
    t = smt.Trace(0.01, free=[0, 2, 2, 0, 1])
    assert t.free_time(0.0, 0.05) == pytest.approx(0.03)
    assert t.free_time(0.015, 0.035) == pytest.approx(0.015)  # [0.015, 0.03) free, [0.03, 0.035) not
    assert t.free_time(0.045, 0.2) == pytest.approx(0.005)  # past the samples: not free


def test_the_trace_does_not_change_the_run() -> None:
    """The sampler and the dispatch wrapper only read: the kvgate arm's outcomes equal the bench's own
    FlowSim run on the same arrivals, request by request."""
    args = argparse.Namespace(
        replicas=1,
        profile="llama3-8b-h100",
        max_num_seqs=8,
        load=0.9,
        seed=3,
        duration=12.0,
        warmup=2.0,
        ttl=30.0,
        max_pending=2,
        headroom=0.75,
        headroom_on="pending",
        ttft_target=0.05,
        running_reserve=True,
        tick=0.005,
    )
    _cap, base = rates(1, "llama3-8b-h100", 3, 8, 0.9, 12.0)
    traced, trace = smt.run_arm("kvgate-reserve-feasible", args, base)
    plain = FlowSim("kvgate-reserve-feasible", 1, "llama3-8b-h100", 3, 30.0, max_num_seqs=8,
                    headroom=0.75, headroom_on="pending", ttft_target=0.05, running_reserve=True)  # fmt: skip
    plain.simulate(Mix(base, "flood", 12.0).arrivals(random.Random(3)), 72.0)
    a = [(o.tenant, o.start, o.ttft, o.status, o.sent) for o in traced.run.outcomes]
    b = [(o.tenant, o.start, o.ttft, o.status, o.sent) for o in plain.run.outcomes]
    assert a == b and len(a) > 50
    assert trace.free and trace.queued and max(trace.queued) > 0  # the flood queued something
    measured, found = smt.misses(traced, trace, 2.0)
    assert found and all(m.cls in smt.CLASSES for m in found)
    t = smt.table("kvgate", measured, found)
    assert t["groups"]["all"]["missed"] == len(found)


def test_the_reference_holds_no_flow_back() -> None:
    """The reference's controller computes fair shares too, but nothing of it holds a flow back: its
    misses are never put in the held-back class."""
    args = argparse.Namespace(
        replicas=1,
        profile="llama3-8b-h100",
        max_num_seqs=8,
        load=0.9,
        seed=3,
        duration=12.0,
        warmup=2.0,
        ttl=30.0,
        max_pending=2,
        headroom=0.75,
        headroom_on="pending",
        ttft_target=0.05,
        running_reserve=True,
        tick=0.005,
    )
    _cap, base = rates(1, "llama3-8b-h100", 3, 8, 0.9, 12.0)
    sim, trace = smt.run_arm("reference", args, base)
    assert trace.held_at_dispatch and not any(trace.held_at_dispatch.values())
    _measured, found = smt.misses(sim, trace, 2.0)
    assert found and not any(m.cls == "queue, slot free (held back)" for m in found)
