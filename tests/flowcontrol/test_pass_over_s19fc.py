"""Review s19-fc (M1, M3) on flw19's pass-over: a blocked dispatch pass costs about one scan of its band,
not one per head passed over (a head is passed over only while the rest of the pool has room, and its band
then chooses again by a heap step, not a new walk from the top band); past ``PASS_OVER_MAX`` the pass ends
(a lower band never goes before a request of a higher band the pool has room for). Pure; counted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvgate.flowcontrol import policies
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import PASS_OVER_MAX, FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def req(rid: str, flow: str, home: str | None = None, priority: int = 0) -> InferenceRequest:
    subset = None if home is None else frozenset({home})
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=subset, priority=priority
    )


def pinned_flows(flows: int, fairness: str, pinned: int | None = None) -> FlowController:
    """``flows`` tenants, each (the first ``pinned``; default all): a follow-up pinned to its own home
    (queued first), then a plain request."""
    c = FlowController(FlowControlConfig(fairness=fairness))
    for f in range(flows if pinned is None else pinned):
        c.enqueue(req(f"p{f}", f"t{f}", home=f"10.0.{f}.1:8000"), 0.0)
    for f in range(flows):
        c.enqueue(req(f"u{f}", f"t{f}"), 0.0)
    return c


class Room:
    """A pinned request's home is full; ``room`` plain requests may still go."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, r: InferenceRequest) -> bool:
        return r.subset is not None or self.room <= 0


def counted_pass(c: FlowController, saturated: Callable[[InferenceRequest], bool]) -> tuple[list[str], int]:
    """One dispatch pass: the requests sent, and how many flow-queue looks (head/head_key) it took."""
    calls = 0
    head, head_key = policies.FlowQueue.head, policies.FlowQueue.head_key

    def count_head(self: policies.FlowQueue, now: float | None = None, due: float | None = None) -> object:
        nonlocal calls
        calls += 1
        return head(self, now, due)

    def count_key(self: policies.FlowQueue, now: float | None = None) -> tuple[bool, float, int] | None:
        nonlocal calls
        calls += 1
        return head_key(self, now)

    policies.FlowQueue.head = count_head  # type: ignore[method-assign]
    policies.FlowQueue.head_key = count_key  # type: ignore[method-assign]
    try:
        sent = []
        for item in dispatch_ready(c, 1.0, saturated):
            sent.append(item.req.request_id)
            if isinstance(saturated, Room):
                saturated.room -= 1
    finally:
        policies.FlowQueue.head = head  # type: ignore[method-assign]
        policies.FlowQueue.head_key = head_key  # type: ignore[method-assign]
    return sent, calls


@pytest.mark.parametrize("fairness", ["global-strict", "least-attained-service"])
def test_a_blocked_pass_over_a_full_pool_is_one_scan(fairness: str) -> None:
    """M1: the pool is full (before, 64 pass-overs each restarting the walk: 65 scans of the band, 38 ms a
    wake at 1000 tenants). Since fc20 each pinned head is parked once, its home full (a heap step each), and
    the next pass meets none of them: one scan, one gate call."""
    flows = 100
    c = pinned_flows(flows, fairness)
    sent, calls = counted_pass(c, lambda _r: True)
    # (global-strict: every p first, each parked; least-attained-service: t0's u0 after p0, blocked)
    assert sent == [] and len(c) == 2 * flows and c.passed == 0
    assert c.parked == (flows if fairness == "global-strict" else 1)
    assert calls <= 4 * flows, f"{calls} flow-queue looks for one blocked pass over {flows} flows"
    gate_calls = 0

    def full(_r: InferenceRequest) -> bool:
        nonlocal gate_calls
        gate_calls += 1
        return True

    sent, calls = counted_pass(c, full)  # (no sweep due, none told: the parked heads cost nothing)
    assert sent == [] and gate_calls == 1 and calls <= flows + 2, (gate_calls, calls)
    assert c.head(1.0).req.request_id == "u0"  # type: ignore[union-attr]


@pytest.mark.parametrize("fairness", ["global-strict", "least-attained-service", "round-robin"])
def test_passing_heads_over_costs_a_heap_step_not_a_scan(fairness: str) -> None:
    """M1: the pool has room for one, 40 heads are pinned to full homes: they are passed over, each
    followed by its band's next choice from a heap ranked once (was: a new walk from the top each)."""
    flows = 100
    c = pinned_flows(flows, fairness, pinned=40)
    sent, calls = counted_pass(c, Room(1))
    assert len(sent) == 1 and sent[0].startswith("u")  # a plain request behind the pinned heads went
    assert c.passed == 0 and len(c) == 2 * 40 + 60 - 1
    assert calls <= 8 * flows, f"{calls} flow-queue looks for one pass over {flows} flows"


def test_past_the_pass_over_cap_a_lower_band_does_not_go_before_a_higher_one() -> None:
    """M3: PASS_OVER_MAX + 1 pinned heads and then "u" in band 10, "low" in band 0, room for one: band 10's
    "u" goes (it fell through to band 0 before s19-fc; from then to fc20 the pass ended at the cap, "u"
    waiting too)."""
    c = FlowController(FlowControlConfig())
    for i in range(PASS_OVER_MAX + 1):
        c.enqueue(req(f"p{i}", f"s{i}", home=f"10.0.{i}.1:8000", priority=10), 0.0)
    c.enqueue(req("u", "v", priority=10), 0.0)
    c.enqueue(req("low", "w", priority=0), 0.0)
    room = 1

    def saturated(r: InferenceRequest) -> bool:
        return r.subset is not None or room <= 0

    sent = []
    for item in dispatch_ready(c, 1.0, saturated):
        sent.append(item.req.request_id)
        room -= 1
    assert sent == ["u"], sent
    assert c.passed == 0 and c.parked == PASS_OVER_MAX + 1


def test_a_full_pool_still_lets_another_models_band_go() -> None:
    """A band of heads waiting for their full homes waits aside; a lower band of another model (another
    pool) still goes. (Since fc20 a plain head of the full pool behind them holds the bands below, as any
    plain head that waits for its pool: strict priority; before, the band's first head decided.)"""
    c = FlowController(FlowControlConfig())
    c.enqueue(req("p", "s", home="10.0.0.1:8000", priority=10), 0.0)
    other = InferenceRequest("o", "m2", prompt_tokens=10, max_tokens=4, fairness_id="w")
    c.enqueue(other, 0.0)
    sent = [i.req.request_id for i in dispatch_ready(c, 1.0, lambda r: r.model == "m")]
    assert sent == ["o"]
    c.enqueue(req("u", "s", priority=10), 0.0)
    c.enqueue(InferenceRequest("o2", "m2", prompt_tokens=10, max_tokens=4, fairness_id="w"), 0.0)
    assert [i.req.request_id for i in dispatch_ready(c, 1.0, lambda r: r.model == "m")] == []
