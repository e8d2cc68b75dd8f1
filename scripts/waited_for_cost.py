"""The late pick's question per candidate (``FlowController.waited_for``: does a queued head of this band or
higher wait aside for this endpoint?) with H parked homes holding the address (subsets sharing it, band 0),
asked for a request of band 1 (the answer no: before session 21 a walk over all H homes): ns per call, best of
5 rounds of 100,000 calls. A synthetic gate; nothing else runs (review s20-fixes-b L1).

    PYTHONPATH=src python scripts/waited_for_cost.py H
"""

from __future__ import annotations

import sys
import time

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

A = "10.0.0.1:8000"


def main() -> None:
    homes = int(sys.argv[1])
    c = FlowController(FlowControlConfig(ttl=60.0))
    for i in range(homes):
        sub = frozenset({A, f"10.1.{i // 250}.{i % 250}:8000"})
        c.enqueue(
            InferenceRequest(f"p{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"s{i}", subset=sub),
            0.0,
        )
    for _ in dispatch_ready(c, 0.0, lambda r: r.subset is not None):
        raise SystemExit("a pass sent a request")
    assert c.parked == homes
    ask, n, best = c.waited_for, 100_000, float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            ask(A, 1)
        best = min(best, (time.perf_counter() - t0) / n)
    print(f"H={homes}: {best * 1e9:.0f} ns per waited_for")


if __name__ == "__main__":
    main()
