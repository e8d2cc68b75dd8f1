"""Flow control with requests of several sequences: the share of the pool's running slots busy while an
``n = 1`` backlog waits, and the sequences each tenant gets (review s22-fc's ``hol_util.py``, kept with the
busy count capped at each server's 8 slots as fixfc22b measured it: overflow queued at a server is not a
busy slot). On fc22's own harness (``tests/flowcontrol/test_sequences_fc22.py``: the real Director, 2
servers x 8 slots, round-robin, ``freeSlotPick``), a tenant of 200 closed-loop ``n = 1`` clients and one
of 1 or 4 clients sending ``n``-sequence requests, each 0.5-1.5 s; a virtual clock (no lock needed).

    PYTHONPATH=src python scripts/fc_sequences_busy.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from flowcontrol.test_sequences_fc22 import OUT, PROMPT, Clock, director, request
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest, PickResult, Usage

SLOTS = 8


def run(
    clients_big: int, n_big: int, dur: float = 1.0, until: float = 200.0, seed: int = 1
) -> tuple[dict, float]:
    """(sequences sent per tenant after the first 20 s, the running slots' busy share after it)."""
    rng = random.Random(seed)
    clock = Clock()
    d = director("round-robin", clock, True)
    flow = d.flow
    eps = list(d.store.all())
    running: list[tuple[float, InferenceRequest, object]] = []
    seqs = {"big": 0, "small": 0}
    busy_area = 0.0
    k = [0]

    def sent(req: InferenceRequest, ep: object) -> None:
        if clock.now > 20:
            seqs[req.fairness_id] += req.sequences
        running.append((clock.now + dur * rng.uniform(0.5, 1.5), req, ep))

    def new(tenant: str) -> None:
        k[0] += 1
        r = request(f"{tenant}{k[0]}", tenant, n_big if tenant == "big" else 1)
        got = flow.arrive(r, clock.now, None)
        if isinstance(got, PickResult):
            sent(r, got.primary)

    for _ in range(clients_big):
        new("big")
    for _ in range(200):
        new("small")
    while clock.now < until:
        clock.now += 0.05
        running.sort(key=lambda t: t[0])
        while running and running[0][0] <= clock.now:
            _, r, ep = running.pop(0)
            d.on_first_token(r, ep)
            d.on_finished(r, ep, Usage(PROMPT, OUT * r.sequences), True)
            new(r.fairness_id)  # (closed loop for both; the n = 1 tenant keeps its backlog)
        for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
            got = flow.settle(item, clock.now)
            sent(item.req, got.primary)
        if clock.now > 20:
            busy_area += sum(min(SLOTS, e.inflight.requests) for e in eps) * 0.05
    return seqs, busy_area / (until - 20) / (SLOTS * len(eps))


def main() -> int:
    for n in (1, 2, 4, 8):
        for c in (1, 4):
            s, u = run(c, n)
            print(f"n={n} clients={c} sequences {s['big']} : {s['small']}  slots busy {u:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
