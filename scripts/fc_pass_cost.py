"""CPU of one flow-control dispatch pass that sends nothing (review s19-fc M1's measurement, kept here so
its figures can be rerun): FLOWS tenants, each with a head pinned to its own saturated home (a Responses
follow-up) and a plain request behind it, the whole pool saturated. Prints microseconds per blocked pass.

    PYTHONPATH=src python scripts/fc_pass_cost.py 1000 global-strict [--headroom 0] [--passes 200]

Run it with two trees' ``src`` in turn (same load) to compare before/after."""

from __future__ import annotations

import argparse
import time

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("flows", type=int)
    ap.add_argument("fairness", choices=("global-strict", "round-robin", "least-attained-service"))
    ap.add_argument("--headroom", type=float, default=0.0, help="fairShareHeadroom")
    ap.add_argument("--passes", type=int, default=200)
    a = ap.parse_args()
    ctl = FlowController(FlowControlConfig(fairness=a.fairness, fair_share_headroom=a.headroom))
    for f in range(a.flows):
        home = frozenset({f"10.0.{f % 200}.1:8000"})
        ctl.enqueue(
            InferenceRequest(f"p{f}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"t{f}", subset=home),
            0.0,
        )
    for f in range(a.flows):
        ctl.enqueue(InferenceRequest(f"u{f}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"t{f}"), 0.0)
    t0 = time.perf_counter()
    for i in range(a.passes):
        for _ in dispatch_ready(ctl, 1.0 + i * 1e-3, lambda r: True):  # every subset saturated
            pass
    dt = (time.perf_counter() - t0) / a.passes
    print(f"flows={a.flows} {a.fairness} headroom={a.headroom}: {dt * 1e6:.0f} us per blocked pass")


if __name__ == "__main__":
    main()
