"""What ``slo-feasible`` across bands costs a dispatch pass with one slot to fill (review s24-rev-fc24 F4).

    PYTHONPATH=src python scripts/fc_feasible_one_slot_cost.py [--flows 10] [--batch 2000] [--repeats 5] \
        [--at 10] [--batch-flows 1]

Band 0 has ``--flows`` least-attained-service flows, each with one request past its 1 s TTFT deadline; band
-1 has ``--batch`` requests of one flow that can still make their 100 s SLO. ``--batch`` dispatch passes run
at t = 10 s, each with room for one request (what a pass does when one slot frees, the only case in which
a queue exists); microseconds per pass, the best of ``--repeats``. The passes' mix differs by rule: strict
priority sends the overdue requests first; ``slo-feasible`` across bands sends the batch requests and keeps
the overdue band aside. fc24's rule rescanned every flow of the overdue band at every pass; the review's
harness (``cost_one_slot.py``), moved here. Run it with two trees' ``src`` in turn (same load) to compare.
Time injected. ``--at`` (fc26b): the passes' time; from 15.5 s the overdue requests are past their aging
time (halfway to the 30 s TTL) and rank at band 0 again, so each pass's band choice is an aged head and
fc26b's rule looks at the batch band's flows (``--batch-flows``, the batch requests spread over them) for
one past its own aging time that expires sooner. ``--fairness`` (review s26-rev-fc26b F1): band 0's and the
batch band's fairness policy (round-robin's pick is O(1) in flows, least-attained-service's O(flows)).
"""

from __future__ import annotations

import argparse
import time

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController, QueuedRequest
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def build(
    flows: int, batch: int, batch_flows: int = 1, fairness: str = "least-attained-service"
) -> FlowController:
    cfg = {"fairnessPolicy": fairness, "orderingPolicy": "slo-feasible"}
    cfg["maxRequests"] = 100000
    ctl = FlowController(parse_flow_control(cfg))
    for f in range(flows):
        req = InferenceRequest(
            f"o{f}", "m", prompt_tokens=10, max_tokens=100, fairness_id=f"f{f}", priority=0,
            headers={"x-slo-ttft-ms": "1000"}, arrival_time=0.0,
        )  # fmt: skip
        ctl.enqueue(req, 0.0)
    for i in range(batch):
        req = InferenceRequest(
            f"b{i}", "m", prompt_tokens=10, max_tokens=100, fairness_id=f"batch{i % batch_flows}",
            priority=-1,
            headers={"x-slo-ttft-ms": "100000"}, arrival_time=9.0,
        )  # fmt: skip
        ctl.enqueue(req, 9.0)
    return ctl


def pass_cost(
    flows: int,
    batch: int,
    repeats: int,
    at: float = 10.0,
    batch_flows: int = 1,
    fairness: str = "least-attained-service",
) -> float:
    best = float("inf")
    for _ in range(repeats):
        ctl = build(flows, batch, batch_flows, fairness)
        n = 0
        t = time.perf_counter()
        for _k in range(batch):
            sent: list[QueuedRequest] = []
            for item in dispatch_ready(ctl, at, lambda _r, s=sent: len(s) >= 1):
                sent.append(item)
                n += 1
        best = min(best, (time.perf_counter() - t) / max(1, n))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, nargs="+", default=[10, 1000])
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--at", type=float, default=10.0)
    p.add_argument("--batch-flows", type=int, default=1)
    p.add_argument(
        "--fairness", default="least-attained-service", choices=["least-attained-service", "round-robin"]
    )
    a = p.parse_args()
    for f in a.flows:
        us = 1e6 * pass_cost(f, a.batch, a.repeats, a.at, a.batch_flows, a.fairness)
        print(
            f"flows={f}: {us:.1f} us per one-slot dispatch pass "
            f"({a.fairness}, best of {a.repeats}, at {a.at} s)"
        )


if __name__ == "__main__":
    main()
