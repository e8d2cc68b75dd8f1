"""A freed slot at a home where N heads wait aside (parked; F flows, round-robin by default): the dispatch
pass that follows, told of it (``FlowController.freed``), sends one request; us per pass and heads parked
(again) per pass, averaged over 200 passes 1 ms apart (fc21: before, the pass put every parked head back in
line and parked again the N - 1 the slot did not take). ``ordering`` (default fcfs): with slo-feasible or
slo-deadline every request has a 1 ms TTFT SLO, so every head is overdue (review s21-fc F3: slo-feasible's
wake scanned an overdue flow's heads at the home). A synthetic gate; nothing else runs.

    PYTHONPATH=src python scripts/park_wake_cost.py N F [fairness [ordering]]
"""

from __future__ import annotations

import sys
import time

from kvgate.flowcontrol import controller as ctl_mod
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

HOME = "10.0.0.1:8000"


def main() -> None:
    n, flows = int(sys.argv[1]), int(sys.argv[2])
    fairness = sys.argv[3] if len(sys.argv) > 3 else "round-robin"
    ordering = sys.argv[4] if len(sys.argv) > 4 else "fcfs"
    slo = {"x-slo-ttft-ms": "1"} if ordering.startswith("slo-") else {}
    passes = 200
    c = FlowController(FlowControlConfig(ttl=1e9, fairness=fairness, ordering=ordering))
    sub = frozenset({HOME})
    for i in range(n + passes):
        r = InferenceRequest(
            f"p{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"s{i % flows}", subset=sub, headers=slo
        )
        c.enqueue(r, 0.0)
    free = [0]

    def saturated(r: InferenceRequest) -> bool:
        return free[0] <= 0

    assert list(dispatch_ready(c, 0.0, saturated)) == [] and c.parked == n + passes
    parks = [0]
    orig = ctl_mod.FlowController.park

    def park(self: FlowController, item: ctl_mod.QueuedRequest, now: float) -> bool:
        parks[0] += 1
        return orig(self, item, now)

    ctl_mod.FlowController.park = park  # type: ignore[method-assign]
    c.sweep_every = 1e9  # (only the told home is asked)
    total = 0.0
    for i in range(passes):
        free[0] = 1
        c.freed(HOME)
        t0 = time.perf_counter()
        for _ in dispatch_ready(c, 1e-3 * (i + 1), saturated):
            free[0] -= 1
        total += time.perf_counter() - t0
    assert len(c) == n, "each pass sends one"
    per = total / passes * 1e6
    print(f"N={n} flows={flows} {fairness} {ordering}: {per:.0f} us a pass, {parks[0] / passes:.0f} parked")


if __name__ == "__main__":
    main()
