"""How exact the fleet's join of the fair-share level is, over random start-up orders of N workers.

    PYTHONPATH=src python scripts/fc_fleet_join_orders.py [--workers 2 3 4] [--ops none restart reload both]
        [--seeds 300]
    PYTHONPATH=src python scripts/fc_fleet_join_orders.py --cost [--workers 2 4 8] [--calls 2000]
        [--repeats 7]

The harness of review s23-rev-flow23 (docs/benchmarks/flowcontrol.md, the fleet's shares: "Past two
workers"), in one process, time injected, nothing started. N controllers (fair share 0.75, TTFT target
0.05 s) share one buffer (a ``bytearray``, as the segment). Per seed, 4-40 random steps: a sync of a
worker's shares (``FleetShares.sync``), a miss (a first token past the target: the worker's own level
moves), a 300 ms stall, a 5 ms tick, and with ``--ops`` a restart (the row cleared, a new controller) or
a reload (a new controller and mark on the same row); then four rounds of syncs of every worker. One
process's level would be the sum of every move made. Prints, per (workers, ops), of ``--seeds`` seeds how
many end with the levels apart, how many with a level above that sum (a move counted twice) and how many
below it (a move lost: a replaced controller's that no live worker's row held).
Run it on another tree's ``src`` (``PYTHONPATH=<tree>/src``) for that tree's column.

``--cost``: microseconds per ``FleetShares.sync`` (each worker's, every ``SHARED_INFLIGHT_SYNC_S`` per pool,
off the request path) in a fleet where every worker's level moved since the last sync (a miss each, so
every row's moves changed: the join's most work), the median of ``--repeats`` runs of ``--calls`` rounds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, PoolMark, segment_size
from kvgate.scheduling.types import InferenceRequest

CFG = FlowControlConfig(ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05)
OPS = {"none": (), "restart": ("restart",), "reload": ("reload",), "both": ("restart", "reload")}
EPS = 1e-9


class Fleet:
    """N workers' controllers and pool marks on one buffer; ``total`` sums every move the misses made."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.buf = bytearray(segment_size(n))
        self.ctls = [FlowController(CFG) for _ in range(n)]
        self.marks = [self._mark(w) for w in range(n)]
        self.total = 0.0
        self.now = 100.0
        self.seq = 0

    def _mark(self, w: int) -> PoolMark:
        mark = FleetMarks(memoryview(self.buf), self.n, w).pool("default")
        assert mark is not None
        return mark

    def sync(self, w: int) -> None:
        self.marks[w].shares.sync(self.ctls[w], self.now)

    def miss(self, w: int) -> None:
        self.seq += 1
        fid = f"q{self.seq % 4}"
        r = InferenceRequest(f"q{self.seq}", "m", prompt_tokens=10, max_tokens=4, fairness_id=fid)
        r.arrival_time = self.now - 0.2
        ctl = self.ctls[w]
        before = ctl.headroom
        ctl.observe_first_token(r, 0.2, service=0.1, held=False)
        self.total += ctl.headroom - before

    def restart(self, w: int) -> None:
        FleetMarks(memoryview(self.buf), self.n, w).clear_row(w)
        self.ctls[w] = FlowController(CFG)
        self.marks[w] = self._mark(w)

    def reload(self, w: int) -> None:  # workers.py: a new controller, a new mark on the same row
        self.ctls[w] = FlowController(CFG)
        self.marks[w] = self._mark(w)

    def settle(self) -> None:
        for _ in range(4):
            self.now += 0.005
            for w in range(self.n):
                self.sync(w)


def run(n: int, seed: int, ops: tuple[str, ...]) -> tuple[list[float], float]:
    """One random order (the review's probe, step for step): the end levels and the sum of the moves."""
    rnd = random.Random(seed)
    f = Fleet(n)
    misses = 0
    for _ in range(rnd.randrange(4, 40)):
        s = rnd.random()
        w = rnd.randrange(n)
        if s < 0.45:
            f.sync(w)
        elif s < 0.6 and misses < 8:
            misses += 1
            f.miss(w)
        elif s < 0.67:
            f.now += 0.3
        elif s < 0.72 and "restart" in ops:
            f.restart(w)
        elif s < 0.77 and "reload" in ops:
            f.reload(w)
        else:
            f.now += 0.005
    f.settle()
    return [c.headroom for c in f.ctls], f.total


def cost(n: int, calls: int) -> float:
    """Microseconds per sync, every worker's level moved since its last one."""
    f = Fleet(n)
    for _ in range(3):
        f.settle()
    spent = 0.0
    for _ in range(calls):
        for w in range(n):
            f.ctls[w].headroom = 0.1 + 0.01 * (f.seq % 7)  # (a move; kept off the clamps)
            f.seq += 1
        f.now += 0.005
        t = time.perf_counter()
        for w in range(n):
            f.sync(w)
        spent += time.perf_counter() - t
    return spent / (calls * n) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=None)
    ap.add_argument("--ops", nargs="+", choices=sorted(OPS), default=["none", "restart", "reload", "both"])
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if args.cost:
        for n in args.workers or [2, 4, 8]:
            runs = [cost(n, args.calls) for _ in range(args.repeats)]
            print(
                f"{n} workers: {statistics.median(runs):.2f} us per sync per pool, median of {args.repeats} "
                f"[{min(runs):.2f}-{max(runs):.2f}]"
            )
        return
    print("| workers, steps | apart | above the sum | below the sum |")
    print("|---|---|---|---|")
    for n in args.workers or [2, 3, 4]:
        for name in args.ops:
            apart = above = below = 0
            for seed in range(args.seeds):
                levels, total = run(n, seed, OPS[name])
                apart += max(levels) - min(levels) > EPS
                above += max(levels) > total + EPS
                below += max(levels) < total - EPS
            of = f" of {args.seeds} |"
            print(f"| {n}, {name} | {apart}{of} {above}{of} {below}{of}")


if __name__ == "__main__":
    main()
