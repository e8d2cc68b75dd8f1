"""What parked heads cost per freed slot and per sweep (review s20-fc M2, M3; fc20's parking, e85fc5e).

M2: one freed slot at a home puts its heads back in line; those parked again in the same pass (the slot
went to another) keep their spell without room, so the soft pins' give-up heap (``_unpins``) holds one entry
per parked request, not one more per freeing (before: 1,000 soft pins and a slot every 100 ms, 180,900
entries for 800 queued requests after 200 freeings, and none was ever given up). M3: with
``flowControl.preemption`` an idle sweep tries one head per full home again, not every parked head (before:
2,000 heads out and parked again per sweep). Both fail on main ab1ba7c / 44f0ee9. Pure, injected time."""

from __future__ import annotations

from typing import Any

from kvgate.flowcontrol import controller as ctl_mod
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

A = "10.0.0.1:8000"


def req(rid: str, flow: str, home: str, priority: int = 0, soft: bool = False) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=frozenset({home}),
        subset_soft=soft, priority=priority,
    )  # fmt: skip


def test_one_freed_slot_does_not_add_an_unpin_entry_per_parked_soft_pin() -> None:
    n = 1000
    c = FlowController(FlowControlConfig(ttl=60.0))
    for i in range(n):
        c.enqueue(req(f"f{i}", "t", A, soft=True), 0.0)
    free = [0]

    def gate(r: InferenceRequest) -> bool:
        return free[0] <= 0 if r.subset is not None else False

    def drain(now: float) -> list[str]:
        out = []
        for item in dispatch_ready(c, now, gate):
            free[0] -= 1
            out.append(item.req.request_id)
        return out

    assert drain(0.0) == [] and c.parked == n
    for k in range(200):
        free[0] = 1
        c.freed(A)
        assert drain(0.001 + k * 0.1) == [f"f{k}"]  # (the order kept: the first parked goes)
    assert len(c) == n - 200 and c.parked == n - 200
    assert len(c._unpins) <= 2 * len(c), f"{len(c._unpins)} give-up entries for {len(c)} queued requests"
    # Their spells run from 0 s: at the midpoint of [0, 60] the home has not served them in time.
    assert c.next_deadline() == 30.0
    free[0] = 0
    assert len(list(dispatch_ready(c, 30.0, lambda r: r.subset is not None))) == n - 200


def test_with_preemption_an_idle_sweep_does_not_take_every_parked_head_out_and_back(monkeypatch: Any) -> None:
    c = FlowController(FlowControlConfig(ttl=1e9))
    n = 2000
    for i in range(n):
        c.enqueue(req(f"p{i}", f"s{i % 10}", f"10.0.0.{i % 50}:8000", priority=1), 0.0)

    def gate(r: InferenceRequest) -> bool:
        return r.subset is not None  # (every home full; the rest of the pool has room)

    def preempt(_r: InferenceRequest) -> bool:
        return False  # (nothing sheddable to stop)

    assert list(dispatch_ready(c, 0.0, gate, preempt)) == []
    assert c.parked == n
    parks = [0]
    orig = ctl_mod.FlowController.park

    def park(self: FlowController, item: Any, now: float) -> bool:
        parks[0] += 1
        return orig(self, item, now)

    monkeypatch.setattr(ctl_mod.FlowController, "park", park)
    assert list(dispatch_ready(c, c.sweep_every, gate, preempt)) == []  # (one idle sweep)
    assert parks[0] <= 50, f"one idle sweep took out and parked again {parks[0]} heads"
    assert c.parked == n


def test_with_preemption_a_head_that_stops_one_lets_the_next_head_of_its_home_try() -> None:
    """What the one-head retry keeps: while preemption succeeds at a full home, its heads go one after
    another in the same sweep's pass (each stops one sheddable request there)."""
    c = FlowController(FlowControlConfig(ttl=1e9))
    for i in range(5):
        c.enqueue(req(f"p{i}", "s", A, priority=1), 0.0)
    stops = [0]

    def preempt(_r: InferenceRequest) -> bool:
        if stops[0] <= 0:
            return False
        stops[0] -= 1
        return True

    assert list(dispatch_ready(c, 0.0, lambda r: True, preempt)) == [] and c.parked == 5
    stops[0] = 3
    sent = [i.req.request_id for i in dispatch_ready(c, c.sweep_every, lambda r: True, preempt)]
    assert sent == ["p0", "p1", "p2"] and c.parked == 2
