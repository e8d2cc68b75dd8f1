"""What ``slo-feasible`` across bands (fc24) costs a dispatch.

    PYTHONPATH=src python scripts/fc_feasible_bands_cost.py [--requests 3000] [--flows 8] [--repeats 7]

Microseconds per dispatch, the best of ``--repeats`` drains: ``--requests`` queued over three bands (10, 0,
-1) and ``--flows`` least-attained-service flows, every other request past its 1 s TTFT deadline, all
taken by one unsaturated ``dispatch_ready`` pass; for ``slo-feasible`` (where a band's overdue choice is
now asked after the lower bands', so a pass may look at every band before it sends) and ``slo-deadline``
(untouched: one comparison per band). Run it with two trees' ``src`` in turn (same load) to compare. Time
injected.
"""

from __future__ import annotations

import argparse
import time

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def build(ordering: str, requests: int, flows: int) -> FlowController:
    cfg = {"fairnessPolicy": "least-attained-service", "orderingPolicy": ordering}
    cfg["maxRequests"] = 10 * requests
    ctl = FlowController(parse_flow_control(cfg))
    for i in range(requests):
        at = 0.0 if i % 2 else 9.5  # (at 10 s: arrived at 0 s = overdue, at 9.5 s = can still make it)
        req = InferenceRequest(
            f"r{i}", "m", prompt_tokens=10, max_tokens=100, fairness_id=f"f{i % flows}",
            priority=(10, 0, -1)[i % 3], headers={"x-slo-ttft-ms": "1000"}, arrival_time=at,
        )  # fmt: skip
        ctl.enqueue(req, at)
    return ctl


def drain_cost(ordering: str, requests: int, flows: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        ctl = build(ordering, requests, flows)
        t = time.perf_counter()
        n = sum(1 for _ in dispatch_ready(ctl, 10.0, lambda _r: False))
        best = min(best, (time.perf_counter() - t) / max(1, n))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--flows", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    for ordering in ("slo-feasible", "slo-deadline"):
        us = 1e6 * drain_cost(ordering, a.requests, a.flows, a.repeats)
        print(f"{ordering}: {us:.2f} us per dispatch (best of {a.repeats})")


if __name__ == "__main__":
    main()
