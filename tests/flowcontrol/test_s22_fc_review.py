"""Review s22-fc (fc22, main 206a4584): requests of several sequences in flow control. Copied as written from
/work/team/reviews/s22-fc-tests by fixfc22 (all 6 fail on main 2130af8f; fixed there).

Run: PYTHONPATH=/work/main/src:/work/main/tests /work/main/.venv/bin/python -m pytest -q -p no:cacheprovider \
    /work/team/reviews/s22-fc-tests
Each test fails on 206a4584. F1 and F2 pass on b82d496 (the session's start: the regressions fc22 brought);
F3 and F4 test fc22's own new rules. No process is started; time is injected.
"""

from __future__ import annotations

from typing import Any

from flowcontrol.test_sequences_overflow import SLOTS, Clock, director, request
from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.flowcontrol.fleet import FleetMarks, PoolMark, segment_size

# -- F1 -------------------------------------------------------------------------------------------------


def test_f1_an_n8_request_is_not_starved_by_one_long_request_per_server() -> None:
    """Each of 2 servers (8 slots) runs one long n=1 request: the pool is 1/8 used. An n=8 request (n =
    maxConcurrency) arrives: ``fits`` wants a server with all 8 slots free, so it waits as long as the long
    requests run, here past its TTL (30 s): evicted with the pool 7/8 idle all along. b82d496 dispatched it
    at once. (Any other flow's request queued behind it in its band waits with it.)"""
    clock = Clock()
    d = director(clock, defaultRequestTTL="30s")
    flow = d.flow
    assert flow is not None
    for i, ep in enumerate(d.store.all()):
        long_one = request(f"long{i}", "chat")
        d.on_dispatched(long_one, ep)  # (running for minutes: not finished in this test)
        d.on_first_token(long_one, ep)
    big = request("big", "batch", n=SLOTS)
    got = flow.arrive(big, 0.0, None)
    sent = got is not None and not hasattr(got, "req")  # (a PickResult: picked at once)
    while not sent and clock.now < 60.0:
        clock.now += 0.5
        flow.ctl.expire(clock.now)
        for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
            flow.settle(item, clock.now)
            sent = sent or item.req is big
    assert sent, "the n=8 request never left (evicted at its TTL) while the pool was 1/8 used"


def test_f1_the_band_and_the_bands_below_do_not_wait_behind_it_on_an_idle_pool() -> None:
    """The same pool (2 of 16 slots used, a priority-1 request running on each server). Queued behind the
    n=8 head: an n=1 request of another flow in its band and one of a lower band. ``dispatch_ready`` stops
    at the head the gate holds (``fits``), so neither leaves: 1 + 1 sequences wait on 14 free slots, until
    a server empties or their TTL. b82d496: all three sent at once."""
    clock = Clock()
    d = director(clock)
    flow = d.flow
    assert flow is not None
    for i, ep in enumerate(d.store.all()):
        r = request(f"long{i}", "chat", priority=1)
        d.on_dispatched(r, ep)
        d.on_first_token(r, ep)
    sent: set[str] = set()
    queued = (request("big", "batch", n=SLOTS), request("other", "other"), request("low", "low", priority=-1))
    for r in queued:
        if not hasattr(flow.arrive(r, 0.0, None), "req"):
            sent.add(r.request_id)
    clock.now = 1.0
    for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
        flow.settle(item, clock.now)
        sent.add(item.req.request_id)
    assert {"other", "low"} <= sent, f"sent only {sorted(sent)} with 14 of 16 slots free"


# -- F2 -------------------------------------------------------------------------------------------------


def test_f2_preemption_stops_no_request_for_a_head_it_cannot_place() -> None:
    """preemption: true, 2 servers x 8 slots, each running 2 streamed sheddable requests (pool 4/16: not
    saturated). A critical n=8 head does not ``fits`` (6 free a server), so the gate says saturated and
    ``Director._preempt`` stops a sheddable request (its client gets a 429): the newest, on server 2. That
    frees 1 slot there (7 free: still no fit), and the head is sent at once, no fit asked after a
    preemption: to server 1, 2 + 8 = 10 sequences of 8. A request stopped for nothing and the overfill
    the change meant to end. b82d496: no preemption (the pool was not saturated), the head sent at once
    (also 10 of 8)."""
    clock = Clock()
    d = director(clock, preemption=True)
    flow = d.flow
    assert flow is not None
    stopped: list[str] = []
    for i, ep in enumerate(d.store.all()):
        for j in range(2):
            v = request(f"v{i}{j}", "bulk", priority=-1, stream=True)
            d.on_dispatched(v, ep)
            d.preemptible(v, ep, lambda rid=v.request_id: stopped.append(rid) or True)
    critical = request("critical", "chat", n=SLOTS, priority=5)
    got = flow.arrive(critical, 0.0, None)
    if hasattr(got, "req"):  # queued: the dispatcher's pass
        for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
            flow.settle(item, clock.now)
    assert stopped == [], f"stopped {stopped} (429 to their clients) on a pool 4/16 used"


# -- F3 -------------------------------------------------------------------------------------------------


class Workers:
    """Two workers' controllers on one pool's marks (``kvgate serve --workers 2``), and ``one``: the same
    requests in one process (as tests/flowcontrol/test_fleet_shares.py)."""

    def __init__(self, cfg: FlowControlConfig) -> None:
        self.buf = bytearray(segment_size(2))
        self.ctls = [FlowController(cfg) for _ in range(2)]
        self.marks: list[PoolMark] = []
        for w in range(2):
            m = FleetMarks(memoryview(self.buf), 2, w).pool("default")
            assert m is not None
            self.marks.append(m)
        self.one = FlowController(cfg)
        self.now = 100.0

    def sync(self) -> None:
        for _ in range(2):
            for m, ctl in zip(self.marks, self.ctls, strict=True):
                m.shares.sync(ctl, self.now)


def test_f3_under_workers_a_quiet_flow_is_not_read_over_its_share_by_the_queued_sequences() -> None:
    """Worker 0: the quiet flow has 12 n=1 requests in flight. Worker 1: a tenant's 5 n=8 requests queued
    (40 sequences; its heads wait for a server with 8 free). One process: demand 52, quiet 12 of it,
    under its share (26). The fleet's total adds queued *requests* (``fleet.py`` ``_SDEMAND``, ``over_share``:
    ``ctl.count``) to per-flow *sequences*: 12 + 5 = 17, and the quiet flow reads over its share (24 > 17):
    held back by the headroom, the reserve meant for it given to no one."""
    cfg = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75)
    f = Workers(cfg)
    for i in range(12):
        r = request(f"q{i}", "quiet")
        for ctl in (f.ctls[0], f.one):
            ctl.arrived(r, f.now)
            ctl.started("quiet", r, f.now)
    for i in range(5):
        r = request(f"b{i}", "big", n=8)
        for ctl in (f.ctls[1], f.one):
            ctl.arrived(r, f.now)
            ctl.enqueue(r, f.now)
    assert not f.one.over_share("quiet") and f.one.over_share("big")
    f.sync()
    assert f.ctls[0].fleet is not None
    for ctl in f.ctls:
        assert ctl.over_share("quiet") == f.one.over_share("quiet"), "the quiet flow read over its share"


# -- F4 -------------------------------------------------------------------------------------------------


def test_f4_round_robin_a_paced_flow_keeps_its_turns_owed() -> None:
    """round-robin, fc22's rule: a request of s sequences uses s turns. A tenant sending n=8 at a steady
    pace of one request per two dispatches (the other tenant backlogged with n=1) has one request queued
    at a time: each is sent, its flow's queue empties, and ``Band.forget`` drops the 7 turns it owes with
    the flow. It then gets every other turn: 8 sequences to the other's 1, as before fc22. (A random
    arrival order builds a backlog and is fair; a paced sender -- a rate limiter, a load generator --
    is not.)"""
    ctl = FlowController(parse_flow_control({"fairnessPolicy": "round-robin", "maxRequests": 100_000}))
    for i in range(3000):
        ctl.enqueue(request(f"s{i}", "small"), 0.0)
    seqs = {"big": 0, "small": 0}
    for step in range(2000):
        if step % 2 == 0:
            ctl.enqueue(request(f"b{step}", "big", n=8), 0.0)
        item = ctl.head(0.0)
        assert item is not None
        ctl.take(item, 0.0)
        seqs[item.flow] += item.seqs
    assert seqs["big"] <= 1.35 * seqs["small"], seqs  # (fc22's own bound for its backlogged case)


# -- F6 -------------------------------------------------------------------------------------------------


def test_f6_the_late_pick_keeps_a_request_of_several_sequences_where_the_gate_found_it_fits() -> None:
    """maxConcurrency 16, maxPendingRequests 2. Server A: 12 running, none pending; B: 2 pending. An n=4
    request: the gate's ``fits`` finds room on A only (B: 2 + 2 pending of 2), so it leaves; the late
    pick's restriction (``Director._free_slot``) counts running slots only, finds both with 4 free and
    restricts nothing: the profile may send it to B (6 pending of 2), where the gate said it does not fit.
    (queue-scorer happens to choose A here; an affinity scorer need not.)"""
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {"freeSlotPick": True},
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 16, "maxPendingRequests": 2},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    store = EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
    d = build_director(cfg, store, flow_metrics=False, clock=lambda: 0.0)
    a, b = d.store.all()
    a.inflight.requests, a.inflight.decoding = 12, 12
    b.inflight.requests, b.inflight.decoding = 2, 0
    r = request("x", "t", n=4)
    assert not d.saturated(r)  # (it fits: on A)
    assert d._free_slot(r) == [a]
