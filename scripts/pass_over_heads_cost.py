"""Dispatch passes over N queued heads pinned to H full homes while the rest of the pool has room (the
band's plain head held back, so a pass sends nothing): us per pass and gate calls per pass, averaged over 50
passes 1 ms apart (review s19-fixes-b L1). Since fc20 the first pass parks every pinned head (they wait aside
for their homes) and the later ones meet none of them but the sweep of up to 64 parked homes every 20 ms;
before, every pass passed each head over again (up to 64 homes and 1,024 heads, then the pass ended). A
synthetic gate; nothing else runs.

    PYTHONPATH=src python scripts/pass_over_heads_cost.py N H
"""

from __future__ import annotations

import sys
import time

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def main() -> None:
    n_heads, homes = int(sys.argv[1]), int(sys.argv[2])
    c = FlowController(FlowControlConfig())
    for i in range(n_heads):
        home = frozenset({f"10.0.0.{i % homes}:8000"})
        c.enqueue(
            InferenceRequest(f"p{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"s{i}", subset=home),
            0.0,
        )
    c.enqueue(InferenceRequest("u", "m", prompt_tokens=10, max_tokens=4, fairness_id="flood"), 0.0)
    calls = 0

    def saturated(r: InferenceRequest) -> bool:
        nonlocal calls
        calls += 1
        return r.subset is not None or r.fairness_id == "flood"  # homes full; the plain head held back

    passes = 50
    t0 = time.perf_counter()
    for i in range(passes):
        for _ in dispatch_ready(c, 1.0 + i * 1e-3, saturated):
            raise SystemExit("a pass sent a request")
    dt = (time.perf_counter() - t0) / passes
    print(f"N={n_heads} homes={homes}: {dt * 1e6:.0f} us per pass, {calls / passes:.0f} gate calls")


if __name__ == "__main__":
    main()
