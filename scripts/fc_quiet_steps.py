"""Do the quiet tenants' requests start in an engine step of their own? (issue #15, fc27)

Runs the flooded mix of ``kvgate bench flowcontrol`` for one arm (the goal configuration's settings:
``--headroom 0.75 --headroom-on pending --ttft-target 0.05 --running-reserve``; same capacity probe and
arrivals as the bench) and records, from the simulated servers' steps, how many requests started their
prefill in the step each measured quiet request started in. Prints the quiet requests by that count
(1: alone) with their TTFT p50 / p90 and how many are over ``--over`` seconds.

    PYTHONPATH=src python scripts/fc_quiet_steps.py --seed 83 [--arm kvgate-reserve-feasible] \
        [--replicas 2 --max-num-seqs 16] [--ttl 1000]

Not in any hot path: a diagnostic on the simulator only.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from typing import Any

from kvgate.bench.flowcontrol_bench import QUIET, FlowSim, Mix, rates


def quiet_by_prefills(args: argparse.Namespace) -> dict[int, list[float]]:
    """The measured quiet requests' TTFTs by the number of requests that started in their first step."""
    _cap, base = rates(args.replicas, args.profile, args.seed, args.max_num_seqs, args.load, args.duration)
    sim = FlowSim(
        args.arm, args.replicas, args.profile, args.seed, args.ttl, max_num_seqs=args.max_num_seqs,
        max_pending=2, headroom=0.75, headroom_on="pending", ttft_target=0.05, running_reserve=True,
    )  # fmt: skip
    prefills: dict[str, int] = {}  # request id -> requests started in its first step

    def on_step(_rep: Any, res: Any) -> None:
        for q in res.started:
            prefills.setdefault(q.request_id, len(res.started))

    for rep in sim.replicas:
        rep.on_step = on_step
    arrivals = Mix(base, "flood", args.duration).arrivals(random.Random(args.seed))
    run = sim.simulate(arrivals, args.duration + 60.0)
    by: dict[int, list[float]] = defaultdict(list)
    for i, o in enumerate(run.outcomes):  # (request ids are r1, r2, ... in arrival order)
        if o.start >= args.warmup and o.tenant in QUIET and o.ttft is not None:
            by[prefills.get(f"r{i + 1}", 0)].append(o.ttft)
    return dict(by)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arm", default="kvgate-reserve-feasible")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--profile", default="llama3-8b-h100")
    p.add_argument("--load", type=float, default=0.9)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--ttl", type=float, default=1000.0)
    p.add_argument("--over", type=float, default=0.052, help="count TTFTs over this (s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    by = quiet_by_prefills(args)
    total = sum(len(v) for v in by.values())
    cell = f"{args.replicas} x {args.max_num_seqs}, seed {args.seed}, --ttl {args.ttl:g}, {args.arm}"
    print(f"{cell}: measured quiet requests by the prefills in the step each started in")
    for k in sorted(by):
        v = sorted(by[k])
        print(
            f"  {k}: {len(v)} ({len(v) / total:.0%}), TTFT p50 {v[len(v) // 2]:.4f} s, "
            f"p90 {v[int(0.9 * (len(v) - 1))]:.4f} s, over {args.over:g} s: {sum(x > args.over for x in v)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
