"""What least-attained-service's kept service (fc23) costs an arrival whose flow comes back.

    PYTHONPATH=src python scripts/fc_las_memory_cost.py [--fairness least-attained-service] [--flows 64]
        [--active 8] [--batch 200] [--repeats 200]

Per request, microseconds, the median over ``--repeats`` batches: ``--active`` flows stay backlogged (one
request each queued, queued again when taken), and each of ``--batch`` arrivals is of one of ``--flows``
other flows, most with nothing queued, followed by one ``take`` of the head: most arrivals are a flow
entering the band (the lift over the active flows, and with fc23 the look-up of what it left with) and
most dispatches of them a flow leaving (fc23: what it leaves with kept). The worst case
for the change; ``scripts/fc_sequences_cost.py`` has the backlogged one. The same request objects every
batch, the garbage collector off. Run it with two trees' ``src`` in turn (same load) to compare. Time
injected.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.scheduling.types import InferenceRequest


def churn_cost(fairness: str, flows: int, active: int, batch: int, repeats: int) -> float:
    ctl = FlowController(FlowControlConfig(fairness=fairness))
    backlog = [InferenceRequest(f"a{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"a{i}")
               for i in range(active)]  # fmt: skip
    reqs = [InferenceRequest(f"r{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"t{i % flows}")
            for i in range(batch)]  # fmt: skip
    for b in backlog:
        ctl.enqueue(b, 0.0)
    out: list[float] = []
    for rep in range(repeats):
        now = float(rep)
        t0 = time.perf_counter()
        for r in reqs:
            ctl.enqueue(r, now)
            item = ctl.head(now)
            assert item is not None
            ctl.take(item, now)
            if item.flow.startswith("a"):  # (an active flow's request: queued again, it stays active)
                ctl.enqueue(item.req, now)
        out.append((time.perf_counter() - t0) / batch * 1e6)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fairness", default="least-attained-service")
    p.add_argument("--flows", type=int, default=64)
    p.add_argument("--active", type=int, default=8)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--repeats", type=int, default=200)
    a = p.parse_args()
    gc.disable()
    us = churn_cost(a.fairness, a.flows, a.active, a.batch, a.repeats)
    print(f"{a.fairness} flows={a.flows} active={a.active}: {us:.2f} us per arrival")


if __name__ == "__main__":
    main()
