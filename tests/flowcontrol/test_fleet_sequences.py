"""Under ``kvgate serve --workers N`` the fleet's share rows carry each flow's in-flight and queued counts in
sequences (fc22); the fleet's total demand must add the queued *sequences* (``ctl.queued_total``) too, not the
queued requests (review s22-fc F3: a quiet flow read over its share, held back by the headroom meant for it).
Two workers' controllers on a real ``multiprocessing.shared_memory`` segment, as ``kvgate serve`` lays it
out (``SharedInFlight`` with the fleet's rows as its extra part); no process started, time injected.
"""

from __future__ import annotations

import multiprocessing

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, segment_size
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.scheduling.types import InferenceRequest


def request(rid: str, flow: str, n: int = 1) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, sequences=n)


def test_the_fleets_total_demand_counts_queued_sequences_on_a_real_segment() -> None:
    """Worker 0: 12 n=1 requests of the quiet flow in flight; worker 1: 5 n=8 requests of another queued
    (40 sequences). One process reads the quiet flow under its share (12 of 52) and the other over; so
    must each worker, reading the fleet's rows (before: total 12 + 5 requests, the quiet flow over)."""
    lock = multiprocessing.Lock()
    owner = SharedInFlight.create(2, lock, extra=segment_size(2))
    views = [SharedInFlight.attach(owner.name, lock, 2, w, extra=segment_size(2)) for w in range(2)]
    marks = [FleetMarks(v.extra, 2, w) for w, v in enumerate(views)]
    try:
        cfg = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75)
        ctls = [FlowController(cfg) for _ in range(2)]
        one = FlowController(cfg)
        now = 100.0
        for i in range(12):
            r = request(f"q{i}", "quiet")
            for ctl in (ctls[0], one):
                ctl.arrived(r, now)
                ctl.started("quiet", r, now)
        for i in range(5):
            r = request(f"b{i}", "big", n=8)
            for ctl in (ctls[1], one):
                ctl.arrived(r, now)
                ctl.enqueue(r, now)
        assert not one.over_share("quiet") and one.over_share("big")
        pools = [m.pool("default") for m in marks]
        for _ in range(2):
            for pm, ctl in zip(pools, ctls, strict=True):
                assert pm is not None
                pm.shares.sync(ctl, now)
        for ctl in ctls:
            assert ctl.fleet is not None
            assert not ctl.over_share("quiet"), "the quiet flow read over its share"
            assert ctl.over_share("big")
    finally:
        for m in marks:
            m.close()
        for v in views:
            v.close()
        owner.close()
