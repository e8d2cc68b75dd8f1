"""Review s21-fc F3: with slo-feasible ordering, a freed slot's wake (fc21) took, for a flow whose first head
at the home is overdue, the least of every head of that flow there: a scan per wake, O(N^2) to drain N heads.
A home now keeps each flow's overdue heads apart (as the flow queue's ``late``), each moved there once: the
heads looked at over many wakes grow with the heads, not with heads x wakes. Counted (``Home._live``, the
look at an index entry), not timed. Fails before. Pure, injected time."""

from __future__ import annotations

from typing import Any

from kvgate.flowcontrol import controller as ctl_mod
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

A = "10.0.0.1:8000"
N, WAKES = 1000, 40


def test_waking_overdue_heads_looks_at_each_once_not_at_every_head_per_wake(monkeypatch: Any) -> None:
    c = FlowController(FlowControlConfig(ttl=1e9, fairness="global-strict", ordering="slo-feasible"))
    for i in range(N):  # (one flow, a 1 ms TTFT SLO: every head overdue from 1 ms on)
        r = InferenceRequest(f"p{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id="f",
                             subset=frozenset({A}), headers={"x-slo-ttft-ms": "1"})  # fmt: skip
        c.enqueue(r, 0.0)
    free = [0]
    assert list(dispatch_ready(c, 0.0, lambda r: free[0] <= 0)) == [] and c.parked == N
    looks = [0]
    orig = ctl_mod.Home._live

    def live(self: ctl_mod.Home, e: Any) -> bool:
        looks[0] += 1
        return orig(self, e)

    monkeypatch.setattr(ctl_mod.Home, "_live", live)
    sent = []
    for k in range(WAKES):
        free[0] = 1
        c.freed(A)
        for item in dispatch_ready(c, 0.01 + 1e-3 * k, lambda r: free[0] <= 0):
            free[0] -= 1
            sent.append(item.req.request_id)
    assert sent == [f"p{k}" for k in range(WAKES)]  # (overdue ones in their order: one deadline, then seq)
    # (before: about N a wake, 39,299 here)
    assert looks[0] < 4 * N, f"{looks[0]} index entries looked at for {WAKES} wakes of {N} overdue heads"
