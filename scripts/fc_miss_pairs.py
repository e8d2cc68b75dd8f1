"""Which requests one flow-control arm loses that another keeps, paired request by request (issue #15).

Runs the flooded mix of ``kvgate bench flowcontrol`` for two arms on the same arrivals (same capacity
probe, seed, TTL: the virtual clock makes each run the bench's to the last digit) and pairs the measured
requests (arrival after ``--warmup``) by arrival. Prints, per tenant group, the requests that met their
TTFT SLO under one arm and missed under the other, with where the loser's time went: kvgate's queue
(arrival -> sent) or the server (sent -> first token), and by second of the flood's 10 s cycle; and the
fleet's busy share (server time with a request running or waiting) on both arms.

    PYTHONPATH=src python scripts/fc_miss_pairs.py [--replicas 2 --max-num-seqs 16] --seed 83 --ttl 1000 \
        [--a reference --b kvgate-reserve-feasible] [--out FILE.json]

The ``kvgate`` arms' settings default to the goal configuration (``--headroom 0.75 --headroom-on pending
--ttft-target 0.05 --running-reserve``). Not in any hot path: a diagnostic on the simulator only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from typing import Any

from kvgate.bench.flowcontrol_bench import BATCH, CRITICAL, FLOOD, QUIET, FlowSim, Mix, Outcome, _slo, rates

GROUPS = {"flood": (FLOOD,), "quiet": QUIET, "critical": (CRITICAL,), "batch": (BATCH,)}


def run(arm: str, args: argparse.Namespace, base: float) -> list[Outcome]:
    sim = FlowSim(
        arm, args.replicas, args.profile, args.seed, args.ttl, max_num_seqs=args.max_num_seqs,
        max_pending=args.max_pending, headroom=args.headroom, headroom_on=args.headroom_on,
        ttft_target=args.ttft_target, running_reserve=args.running_reserve,
    )  # fmt: skip
    arrivals = Mix(base, "flood", args.duration).arrivals(random.Random(args.seed))
    return sim.simulate(arrivals, args.duration + 60.0).outcomes


def hit(o: Outcome) -> bool:
    return not o.status and o.ttft is not None and o.ttft <= _slo(o.tenant)


def group(tenant: str) -> str:
    return next(g for g, ts in GROUPS.items() if tenant in ts)


def where(o: Outcome) -> dict[str, float | None]:
    if o.sent is None:
        return {"queue": None, "server": None}
    return {"queue": o.sent - o.start, "server": None if o.ttft is None else o.start + o.ttft - o.sent}


def mean(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return sum(v) / len(v) if v else None


def compare(a: list[Outcome], b: list[Outcome], warmup: float) -> dict[str, Any]:
    assert len(a) == len(b)
    rows: dict[str, Any] = {}
    per_sec: dict[str, Counter[int]] = {"a_only": Counter(), "b_only": Counter()}
    for g in GROUPS:
        pairs = [(x, y) for x, y in zip(a, b, strict=True) if x.start >= warmup and group(x.tenant) == g]
        for x, y in pairs:
            assert x.tenant == y.tenant and abs(x.start - y.start) < 1e-9
        a_only = [(x, y) for x, y in pairs if hit(x) and not hit(y)]
        b_only = [(x, y) for x, y in pairs if hit(y) and not hit(x)]
        for key, sel in (("a_only", a_only), ("b_only", b_only)):
            for x, _ in sel:
                per_sec[key][int(x.start % 10.0)] += 1
        rows[g] = {
            "requests": len(pairs),
            "hits_a": sum(hit(x) for x, _ in pairs),
            "hits_b": sum(hit(y) for _, y in pairs),
            "a_only": len(a_only),
            "b_only": len(b_only),
            # where the loser's time went (mean seconds), on the arm that lost it, and the winner's
            "a_only_b_queue": mean([where(y)["queue"] for _, y in a_only]),
            "a_only_b_server": mean([where(y)["server"] for _, y in a_only]),
            "a_only_a_queue": mean([where(x)["queue"] for x, _ in a_only]),
            "a_only_a_server": mean([where(x)["server"] for x, _ in a_only]),
            "b_only_a_queue": mean([where(x)["queue"] for x, _ in b_only]),
            "b_only_a_server": mean([where(x)["server"] for x, _ in b_only]),
            "b_only_b_queue": mean([where(y)["queue"] for _, y in b_only]),
            "b_only_b_server": mean([where(y)["server"] for _, y in b_only]),
            # a_only losers under b: queue wait longer than the SLO alone (the queue lost it) vs not
            "a_only_b_queue_over_slo": sum(
                1 for x, y in a_only if y.sent is not None and y.sent - y.start > _slo(y.tenant)
            ),
            "a_only_b_shed_or_unfinished": sum(1 for _, y in a_only if y.status or y.ttft is None),
        }
    rows["by_cycle_second"] = {k: [v[s] for s in range(10)] for k, v in per_sec.items()}
    return rows


def dispatches(outs: list[Outcome], warmup: float, duration: float) -> dict[str, Any]:
    """Per second of the flood's cycle (sent time, warmup..duration): the flood's dispatches that met their
    SLO (sent while it could) and those that did not, the other tenants' dispatches (all a second's
    dispatches over the cycles, divided by the cycles); the backlog (arrived, not yet sent) at each cycle's
    start; and when the last measured request got its first token (the fleet's drain)."""
    cycles = max(1, round((duration - warmup) / 10.0))
    flood_hit, flood_miss, other = [0.0] * 10, [0.0] * 10, [0.0] * 10
    for o in outs:
        if o.sent is None or not warmup <= o.sent < duration:
            continue
        s = int(o.sent % 10.0)
        if o.tenant != FLOOD:
            other[s] += 1 / cycles
        elif hit(o):
            flood_hit[s] += 1 / cycles
        else:
            flood_miss[s] += 1 / cycles
    backlog = []
    t = warmup
    while t < duration:
        backlog.append(
            sum(1 for o in outs if o.start < t and (o.sent is None or o.sent >= t) and not o.status)
        )
        t += 10.0
    firsts = [o.start + o.ttft for o in outs if o.ttft is not None and o.start >= warmup]
    return {
        "flood_hit": flood_hit,
        "flood_miss": flood_miss,
        "other": other,
        "backlog": backlog,
        "last_first_token_s": max(firsts) if firsts else None,
    }


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def render(cell: str, a: str, b: str, rows: dict[str, Any]) -> str:
    lines = [f"{cell}: A = {a}, B = {b} (measured requests, paired by arrival)", "",
             "| group | requests | hits A | hits B | A only | B only | A-only: B queue / server s | "
             "A-only: A queue / server s | A-only with B queue > SLO | B only: A queue / server s | "
             "B only: B queue / server s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in GROUPS:
        r = rows[g]
        lines.append(
            f"| {g} | {r['requests']} | {r['hits_a']} | {r['hits_b']} | {r['a_only']} | {r['b_only']} | "
            f"{_f(r['a_only_b_queue'])} / {_f(r['a_only_b_server'])} | "
            f"{_f(r['a_only_a_queue'])} / {_f(r['a_only_a_server'])} | {r['a_only_b_queue_over_slo']} | "
            f"{_f(r['b_only_a_queue'])} / {_f(r['b_only_a_server'])} | "
            f"{_f(r['b_only_b_queue'])} / {_f(r['b_only_b_server'])} |"
        )
    cyc = rows["by_cycle_second"]
    lines += [
        "",
        "by second of the flood's 10 s cycle (arrival), A only: " + " ".join(map(str, cyc["a_only"])),
        "                                              B only: " + " ".join(map(str, cyc["b_only"])),
    ]
    for name in ("a", "b"):
        d = rows["dispatch_" + name]
        lines += [
            "",
            f"{a if name == 'a' else b}: dispatches a second by second of the cycle (sent time), "
            "flood hit / flood miss / others; backlog at each cycle's start "
            + " ".join(map(str, d["backlog"]))
            + f"; last first token {d['last_first_token_s']:.1f} s",
        ]
        lines.append(
            "  "
            + "  ".join(
                f"{s}: {h:.0f}/{m:.0f}/{o:.0f}"
                for s, (h, m, o) in enumerate(zip(d["flood_hit"], d["flood_miss"], d["other"], strict=True))
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--profile", default="llama3-8b-h100")
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--load", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--ttl", type=float, default=30.0)
    p.add_argument("--a", default="reference")
    p.add_argument("--b", default="kvgate-reserve-feasible")
    p.add_argument("--max-pending", type=int, default=2)
    p.add_argument("--headroom", type=float, default=0.75)
    p.add_argument("--headroom-on", choices=("saturation", "pending"), default="pending")
    p.add_argument("--ttft-target", type=float, default=0.05)
    p.add_argument("--no-running-reserve", dest="running_reserve", action="store_false")
    p.add_argument("--out", help="write the comparison as JSON here")
    args = p.parse_args(argv)
    _cap, base = rates(args.replicas, args.profile, args.seed, args.max_num_seqs, args.load, args.duration)
    a, b = run(args.a, args, base), run(args.b, args, base)
    rows = compare(a, b, args.warmup)
    rows["dispatch_a"] = dispatches(a, args.warmup, args.duration)
    rows["dispatch_b"] = dispatches(b, args.warmup, args.duration)
    cell = f"{args.replicas} x {args.max_num_seqs}, seed {args.seed}, --ttl {args.ttl:g}, load {args.load:g}"
    print(render(cell, args.a, args.b, rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cell": cell, "a": args.a, "b": args.b, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
