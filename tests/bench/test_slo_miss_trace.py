"""``scripts/slo_miss_trace.py``: each SLO miss's class by the first counterfactual that saves it, the
free-slot time of a wait, and a trace that does not change the run it watches (issue #15, fc15)."""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import slo_miss_trace as smt

from kvgate.bench.flowcontrol_bench import FLOOD, FlowSim, Mix, Outcome, rates
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController, free_slots
from kvgate.scheduling.types import InferenceRequest


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
    args = _args(replicas=1, max_num_seqs=8, load=0.9, seed=3, duration=12.0)
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
    args = _args(replicas=1, max_num_seqs=8, load=0.9, seed=3, duration=12.0)
    _cap, base = rates(1, "llama3-8b-h100", 3, 8, 0.9, 12.0)
    sim, trace = smt.run_arm("reference", args, base)
    assert trace.held_at_dispatch and not any(trace.held_at_dispatch.values())
    _measured, found = smt.misses(sim, trace, 2.0)
    assert found and not any(m.cls == "queue, slot free (held back)" for m in found)


def _args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "replicas": 2, "profile": "llama3-8b-h100", "max_num_seqs": 16, "load": 0.7, "seed": 0,
        "duration": 15.0, "warmup": 2.0, "ttl": 30.0, "max_pending": 2, "headroom": 0.75,
        "headroom_on": "pending", "ttft_target": 0.05, "running_reserve": True, "tick": 0.005,
    }  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


def _req(rid: str, flow: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=priority, fairness_id=flow)


def test_reserve_reading_after_a_finish_is_the_reserve_and_leaves_the_controller_alone() -> None:
    """Review s15-fc F1: the trace read the reserve's cache, which every finish (and every dispatch not
    held back) clears to 0 until the gate asks again. The reading is the reserve ``free_reserve`` gives
    at that instant, and reading it changes nothing in the controller (the cache, the extra and its
    cap stay as they were)."""
    ctl = FlowController(
        FlowControlConfig(
            fair_share_headroom=0.75, fair_share_ttft_target=0.05, fair_share_running_reserve=True
        )
    )
    t = 0.0
    for i in range(100):  # the others take free slots at ~2/s, finishes at ~10/s
        t = i * 0.1
        r = _req(f"q{i}", f"q{i % 2}") if i % 5 == 0 else _req(f"b{i}", "batch", priority=-1)
        ctl.started(r.fairness_id, r, t)
        ctl.ended(r.fairness_id, t)
    ctl.started("q1", _req("q1", "q1"), t)
    assert ctl.free_reserve(t, 24) >= 1
    ctl.ended("q1", t + 0.001)  # one finish: the reserve's size hardly changes, its cache is cleared
    assert ctl._reserve_cache == (None, 0)
    before = dict(ctl.__dict__)
    got = smt.reserve_in_force(ctl, t + 0.001, 32)  # 32 slots: cap int(32 * 0.75) = 24
    assert got >= 1
    assert ctl.__dict__ == before  # nothing written (the cache stays cleared)
    assert got == ctl.free_reserve(t + 0.001, 24)  # what the gate computes when it asks


class _Recorder(FlowSim):
    """The bench's FlowSim, recording each dispatch (request, server, time) and, every 5 ms from 0,
    the controller's state as the gate would read it: the reserve by free_reserve's formula written
    out (without its writes), the queue's length and the adaptive headroom. Only reads."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.dispatched: list[tuple[str, str, float]] = []
        self.seen: dict[int, tuple[int, int, float]] = {}
        self._k = 0
        self.clock.call_at(0.0, self._tick)

    def _send(self, req: InferenceRequest, ep: Any, out: Outcome) -> None:
        self.dispatched.append((req.request_id, ep.address, self.clock.now))
        super()._send(req, ep, out)

    def _tick(self) -> None:
        flow = self.director.flow
        assert flow is not None
        ctl, now = flow.ctl, self.clock.now
        cap = int(self.director._running_slots() * len(self.endpoints) * ctl.cfg.fair_share_headroom)
        extra = min(ctl.free_extra, max(ctl._extra_cap, cap))
        take, give = ctl.rates(now)
        fresh = min(cap, free_slots(take, give, ctl.reserve_miss, cap) + int(extra + 0.5))
        self.seen[self._k] = (fresh, len(ctl), ctl.headroom)
        self._k += 1
        if now < 80.0:
            self.clock.call_later(0.005, self._tick)


def test_the_trace_changes_no_dispatch_in_a_two_server_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s15-fc F5: on two servers routing can differ too. A 2 x 16 cell (70 %, tuning seed 0, 15 s)
    traced and not: the same requests go to the same servers at the same instants, with the same
    outcomes (TTFT, status, dispatch and first-schedule times)."""
    args = _args()
    _cap, base = rates(2, "llama3-8b-h100", 0, 16, 0.7, 15.0)
    monkeypatch.setattr(smt, "FlowSim", _Recorder)
    traced, trace = smt.run_arm("kvgate-reserve-feasible", args, base)
    plain = _Recorder("kvgate-reserve-feasible", 2, "llama3-8b-h100", 0, 30.0, max_num_seqs=16, headroom=0.75,
                      headroom_on="pending", ttft_target=0.05, running_reserve=True)  # fmt: skip
    plain.simulate(Mix(base, "flood", 15.0).arrivals(random.Random(0)), 75.0)
    assert isinstance(traced, _Recorder)
    assert traced.dispatched == plain.dispatched and len(plain.dispatched) > 200
    assert len({ep for _r, ep, _t in plain.dispatched}) == 2
    a = [(o.tenant, o.start, o.ttft, o.status, o.sent, o.scheduled) for o in traced.run.outcomes]
    b = [(o.tenant, o.start, o.ttft, o.status, o.sent, o.scheduled) for o in plain.run.outcomes]
    assert a == b
    assert max(trace.queued) > 0 and max(trace.reserve) > 0  # the gate was at work


def test_the_reserve_queue_and_headroom_columns_are_the_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s15-fc F1/F5, end to end on a 4 x 128 cell (70 %, tuning seed 0), where the pending
    headroom holds the flood back and the gate seldom asks the reserve: at every tick the trace's
    queue and headroom are the controller's, and over the second burst's first 2 s (the flood
    queued) its reserve column is the reserve in force (the old reading of the cache: 1.4 against
    4.3)."""
    args = _args(replicas=4, max_num_seqs=128, duration=12.0, warmup=10.0)
    _cap, base = rates(4, "llama3-8b-h100", 0, 128, 0.7, 12.0)
    monkeypatch.setattr(smt, "FlowSim", _Recorder)
    sim, trace = smt.run_arm("kvgate-reserve-feasible", args, base)
    assert isinstance(sim, _Recorder)
    ks = [k for k in sim.seen if k < len(trace.queued)]
    assert len(ks) > 2000
    assert [trace.queued[k] for k in ks] == [sim.seen[k][1] for k in ks]
    assert [trace.headroom[k] for k in ks] == [sim.seen[k][2] for k in ks]
    burst = [k for k in ks if 10.0 <= k * trace.tick < 12.0 and trace.queued[k]]
    assert len(burst) > 200 and max(trace.headroom[k] for k in burst) > 0  # the headroom at work
    traced = sum(trace.reserve[k] for k in burst) / len(burst)
    fresh = sum(sim.seen[k][0] for k in burst) / len(burst)
    assert fresh >= 1.0
    assert traced == pytest.approx(fresh, rel=0.05), f"traced reserve {traced:.2f} vs in force {fresh:.2f}"


def test_held_back_only_while_the_gate_has_headroom_or_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s15-fc F2 (minor): with a TTFT target and no running reserve the gate holds a request
    back only while the adapted headroom is above 0 (``Director.saturated``); the configured 0.75 is
    not it. The adapted headroom starts at 0: a batch request dispatched then was labelled held back."""

    class Headroom(FlowSim):
        at: dict[str, float]

        def _send(self, req: InferenceRequest, ep: Any, out: Outcome) -> None:
            flow = self.director.flow
            assert flow is not None
            self.at = getattr(self, "at", {})
            self.at[req.request_id] = flow.ctl.headroom
            super()._send(req, ep, out)

    args = _args(replicas=1, max_num_seqs=8, load=0.9, seed=3, duration=12.0, running_reserve=False)
    _cap, base = rates(1, "llama3-8b-h100", 3, 8, 0.9, 12.0)
    monkeypatch.setattr(smt, "FlowSim", Headroom)
    sim, trace = smt.run_arm("kvgate-reserve-feasible", args, base)
    assert isinstance(sim, Headroom)
    at_zero = [rid for rid, h in sim.at.items() if h == 0.0]
    assert at_zero and not any(trace.held_at_dispatch[rid] for rid in at_zero)  # (4 were, before)
    assert any(trace.held_at_dispatch.values())  # held back once the headroom rose


# -- --floor (session 18): the best TTFT any gate or pick could give a quiet request ------------------


def test_step_at_finds_the_step_in_progress() -> None:
    rows = [(0.0, 0.01, 0, 8), (0.01, 0.045, 1, 8), (0.06, 0.07, 0, 4)]  # idle in [0.045, 0.06)
    assert smt.step_at(rows, 0.0) == rows[0]
    assert smt.step_at(rows, 0.02) == rows[1]
    assert smt.step_at(rows, 0.045) is None  # a step's end is the next one's start, or idle
    assert smt.step_at(rows, 0.05) is None
    assert smt.step_at(rows, 0.065) == rows[2]
    assert smt.step_at(rows, 1.0) is None
    assert smt.step_at([], 0.0) is None


def test_own_step_is_the_step_model() -> None:
    # The bench's printed figures: one 1,024-token prefill alone 0.025 s, next to 128 decodes 0.035 s.
    assert smt.own_step_s("llama3-8b-h100", 0) == pytest.approx(0.0253, abs=0.0005)
    assert smt.own_step_s("llama3-8b-h100", 128) == pytest.approx(0.035, abs=0.001)
    assert smt.own_step_s("llama3-8b-h100", 128) > smt.own_step_s("llama3-8b-h100", 8)


def test_the_floor_is_the_best_server() -> None:
    costs = {(0, 0): 0.025, (8, 0): 0.026, (100, 0): 0.033, (8, 1): 0.052, (8, 2): 0.078}

    def own(d: int, k: int) -> float:
        return costs[(d, k)]

    busy = [(0.0, 0.06, 2, 100)]  # in a two-prefill step until 0.06
    decode = [(0.0, 0.012, 0, 8), (0.012, 0.024, 0, 8)]  # decode-only steps
    t = smt.Trace(0.005, steps=[busy, decode], submits=[[], []])
    assert smt.quiet_floor(t, 0.01, own) == pytest.approx(0.002 + 0.026)  # the decoding server
    t = smt.Trace(0.005, steps=[busy], submits=[[]])
    assert smt.quiet_floor(t, 0.01, own) == pytest.approx(0.05 + 0.033)  # the rest of the step + its own
    t = smt.Trace(0.005, steps=[busy, []], submits=[[], []])
    assert smt.quiet_floor(t, 0.01, own) == pytest.approx(0.025)  # an idle server: prefilled alone now


def test_the_floor_counts_requests_already_waiting_for_the_next_step() -> None:
    # Handed to the decoding server during its step in progress (0.012-0.024) before t: they share the
    # quiet request's next step; one handed before that step began (0.011) and one after t (0.02) do not.
    costs = {(8, 0): 0.026, (8, 1): 0.052, (8, 2): 0.078}

    def own(d: int, k: int) -> float:
        return costs[(d, k)]

    decode = [(0.0, 0.012, 0, 8), (0.012, 0.024, 0, 8)]
    t = smt.Trace(0.005, steps=[decode], submits=[[0.011, 0.013, 0.014, 0.02]])
    assert smt.quiet_floor(t, 0.015, own) == pytest.approx(0.009 + 0.078)
    t = smt.Trace(0.005, steps=[decode], submits=[[0.011]])
    assert smt.quiet_floor(t, 0.015, own) == pytest.approx(0.009 + 0.026)


def test_own_step_with_others_is_longer() -> None:
    one = smt.own_step_s("llama3-8b-h100", 100)
    two = smt.own_step_s("llama3-8b-h100", 100, 1)
    assert two > one + 0.02  # a second 1,024-token prefill costs ~0.026 s


def test_floor_run_records_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # A short 2 x 16 cell: every server's steps are recorded back to back, none overlapping, and the
    # floor table covers the measured quiet requests (the floor never above what they got).
    args = argparse.Namespace(
        replicas=2, profile="llama3-8b-h100", seed=0, ttl=30.0, max_num_seqs=16, max_pending=2,
        headroom=0.75, headroom_on="pending", ttft_target=0.05, running_reserve=True, tick=0.005,
        duration=12.0, warmup=2.0, floor=True,
    )  # fmt: skip
    _cap, base = rates(2, "llama3-8b-h100", 0, 16, 0.7, 12.0)
    sim, trace = smt.run_arm("reference", args, base)
    assert len(trace.steps) == 2 and all(trace.steps)
    assert len(trace.submits) == 2 and all(trace.submits)
    assert all(a <= b for subs in trace.submits for a, b in itertools.pairwise(subs))
    for rows in trace.steps:
        assert all(a < b <= c for (a, b, *_), (c, *_r) in itertools.pairwise(rows))
    measured = [o for o in sim.run.outcomes if o.start >= args.warmup]
    t = smt.floor_table(trace, measured, 0.05, args.profile, args.warmup, args.duration)
    quiet = [o for o in measured if o.tenant in smt.QUIET and o.ttft is not None]
    assert t["quiet"] == len(quiet) > 0
    assert t["floor_over_line"] <= t["over_line"]
    assert sum(r["quiet"] for r in t["cycle"]) == len(quiet)
