"""What weighing requests as their sequences (fc22) costs a flow-controlled arrival.

    PYTHONPATH=src python scripts/fc_sequences_cost.py [--fairness round-robin] [--n 1] [--batch 200]
        [--repeats 200]

Per request, microseconds, the median over ``--repeats`` batches, two parts:

- ``queue``: ``FlowController.enqueue`` of ``--batch`` requests of ``--n`` sequences (8 flows, behind one
  queued first), each taken by ``dispatch_ready`` (a gate always open), ``started`` and ``ended`` as the
  Director tells them (``ended`` with its sequences where the tree takes them);
- ``gate``: ``Director.saturated`` of one request on a pool of 4 endpoints (concurrency-detector with a
  pending bound, ``freeSlotPick``), half their slots busy: the dispatch gate each queued head asks.

The same request objects every batch, the garbage collector off. Run it with two trees' ``src`` in turn
(same load) to compare before/after. Time injected.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import time
from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def queue_cost(fairness: str, n: int, batch: int, repeats: int) -> float:
    ctl = FlowController(FlowControlConfig(fairness=fairness))
    reqs = [
        InferenceRequest(f"r{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"t{i % 8}", sequences=n)
        for i in range(batch)
    ]
    first = InferenceRequest("first", "m", prompt_tokens=10, max_tokens=4, fairness_id="t0")
    takes_seqs = "seqs" in inspect.signature(ctl.ended).parameters
    out: list[float] = []
    for rep in range(repeats):
        now = float(rep)
        ctl.enqueue(first, now)
        t0 = time.perf_counter()
        for r in reqs:
            ctl.enqueue(r, now)
        for item in dispatch_ready(ctl, now, lambda _r: False):
            ctl.record(item, "Dispatched", now)
            ctl.started(item.flow, item.req, now)
            if takes_seqs:
                ctl.ended(item.flow, now, n)
            else:
                ctl.ended(item.flow, now)
        out.append((time.perf_counter() - t0) / batch * 1e6)
        assert len(ctl) == 0
    return statistics.median(out)


def gate_cost(n: int, batch: int, repeats: int) -> float:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {"freeSlotPick": True},
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": 16, "maxPendingRequests": 16},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    store = EndpointStore.from_addresses([f"10.0.0.{i}:8000" for i in range(4)])
    d = build_director(cfg, store, flow_metrics=False, clock=lambda: 0.0)
    for ep in d.store.all():
        ep.inflight.requests, ep.inflight.decoding = 8, 8
    req = InferenceRequest("g", "m", prompt_tokens=10, max_tokens=4, fairness_id="t", sequences=n)
    out: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batch):
            d.saturated(req)
        out.append((time.perf_counter() - t0) / batch * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fairness", default="round-robin",
                    choices=("global-strict", "round-robin", "least-attained-service"))  # fmt: skip
    ap.add_argument("--n", type=int, default=1, help="sequences per request")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args()
    gc.disable()
    q = queue_cost(a.fairness, a.n, a.batch, a.repeats)
    g = gate_cost(a.n, a.batch, a.repeats)
    print(f"fairness={a.fairness} n={a.n}: queue {q:.2f} us/request, gate {g:.2f} us/call")


if __name__ == "__main__":
    main()
