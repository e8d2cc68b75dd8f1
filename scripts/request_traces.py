"""Per-request traces of one fleet-simulator run under two policies, joined request by request.

The workloads are fixed by the seed (the same requests at the same times, ids ``r<n>`` in arrival
order), so each request can be followed under both policies: which replicas' engines held its prompt
at its arrival (engine truth, not a picker's index), where each policy sent it, the queue (waiting
requests, running requests, prompt tokens still to prefill) at that replica at that moment, and its
TTFT. Prints each policy's slowest 10% with the other policy's fate for the same request, a
per-replica balance table (requests routed there, prefill tokens computed there, cold prefills),
"collisions": requests that arrived at a replica while it was computing a long cold prefill, and what
the requests at or over the p90 are: cold everywhere (and how many of those are their group's first
request of the run, incl. warm-up: no routing can have cached them), warm ones that arrived during a
step computing more than 4,096 prefill tokens at their replica, routing misses (sent to a replica
holding less than the best engine did), and the rest (queued behind warm requests).

    PYTHONPATH=src python scripts/request_traces.py mixed FAMILY[:FIELD=N,...] QPS SEED POLICY_A POLICY_B [N]
    PYTHONPATH=src python scripts/request_traces.py scenario NAME QPS SEED DURATION POLICY_A POLICY_B [N]

N (default 25) is how many of each tail to print request by request.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sim_setup import family, scenario_sim
from tail_breakdown import Rec, instrument, mixed_class

from kvgate.bench.fleetsim import FleetSim


@dataclass(slots=True)
class Seen:
    """Each replica's queue at a request's arrival, before it was routed."""

    waiting: list[int]
    running: list[int]
    todo: list[int]  # prefill tokens in the step each replica is running at the arrival
    first: bool = False  # the first request of its group in the run (warm-up included)


def trace(sim: FleetSim, classify: Any) -> tuple[dict[str, Rec], dict[str, Seen]]:
    recs = instrument(sim, classify)
    seen: dict[str, Seen] = {}
    groups: set[str] = set()
    engines = [r.engine for r in sim.replicas]
    arrive = sim._arrive

    steps: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(engines)  # (start, end, prefill tokens)

    def record(i: int, e: Any) -> None:
        step = e.step

        def wrapped(now: float) -> Any:
            res = step(now)
            steps[i] = (now, now + res.duration, res.num_prefill_tokens)
            return res

        e.step = wrapped

    for i, e in enumerate(engines):
        record(i, e)

    def todo(i: int) -> int:
        """Prefill tokens of the step in progress at replica i now (0 if it is idle or between steps)."""
        start, end, pf = steps[i]
        return pf if start <= sim.clock.now < end else 0

    def watch(spec: Any) -> None:
        rid = f"r{sim._n}"
        if sim.clock.now >= sim.cfg.warmup:
            seen[rid] = Seen(
                [e.num_waiting for e in engines],
                [e.num_running for e in engines],
                [todo(i) for i in range(len(engines))],
                bool(spec.group) and spec.group not in groups,
            )
        if spec.group:
            groups.add(spec.group)
        arrive(spec)

    sim._arrive = watch  # type: ignore[method-assign]
    return recs, seen


def composition(recs: dict[str, Rec], seen: dict[str, Seen], p90: float) -> str:
    """What the requests at or over the p90 are (see the module docstring)."""
    over = [(rid, r) for rid, r in recs.items() if r.ttft > 0 and r.ttft >= p90]
    cold = [(rid, r) for rid, r in over if r.best_cached < 0.2 * r.prompt]
    first = sum(1 for rid, _ in cold if rid in seen and seen[rid].first)
    warm = [(rid, r) for rid, r in over if r.best_cached >= 0.2 * r.prompt]
    long_step = [(rid, r) for rid, r in warm if rid in seen and seen[rid].todo[r.replica] > 4096]
    miss = [(rid, r) for rid, r in warm if (rid, r) not in long_step and r.here_cached + 16 < r.best_cached]
    rest = [r for rid, r in warm if (rid, r) not in long_step and (rid, r) not in miss]
    queue = statistics.median(r.queue for r in rest) * 1000 if rest else 0.0
    return (
        f"at or over the p90 ({len(over)}): cold everywhere {len(cold)} ({first} their group's first "
        f"request), arrived during a > 4k-token prefill step {len(long_step)}, routing misses {len(miss)}, "
        f"other {len(rest)} (median queue {queue:.0f} ms)"
    )


def build(argv: list[str]) -> tuple[list[str], Any]:
    kind = argv[0]
    if kind == "mixed":
        from kvgate.bench.multiturn import mixed_sim

        fam = family(argv[1])  # FAMILY or FAMILY:field=value,...
        qps, seed = float(argv[2]), int(argv[3])
        return argv[4:], lambda policy: (mixed_sim(fam, policy, qps, seed), mixed_class)
    from kvgate.bench.scenarios import SCENARIOS

    sc, qps, seed, duration = SCENARIOS[argv[1]], float(argv[2]), int(argv[3]), float(argv[4])

    def make(policy: str) -> tuple[FleetSim, Any]:
        return scenario_sim(sc, policy, qps, seed, duration), lambda spec: spec.group[:1] or "r"

    return argv[5:], make


def main() -> None:
    rest, make = build(sys.argv[1:])
    policies = rest[:2]
    n_show = int(rest[2]) if len(rest) > 2 else 25
    runs: dict[str, tuple[dict[str, Rec], dict[str, Seen], Any]] = {}
    for policy in policies:
        sim, classify = make(policy)
        recs, seen = trace(sim, classify)
        row = sim.run().row
        runs[policy] = (recs, seen, row)
        print(
            f"{policy}: p50 {row['ttft_p50'] * 1000:.0f} ms, p90 {row['ttft_p90'] * 1000:.0f} ms, "
            f"hit {row['prefix_hit_rate']:.3f}"
        )
    a, b = policies
    sa = runs[a][1]
    nrep = len(next(iter(sa.values())).waiting)
    for policy in policies:
        recs, seen, _ = runs[policy]
        done = [r for r in recs.values() if r.ttft > 0]
        reqs = Counter(r.replica for r in done)
        prefill = Counter()
        cold = Counter()
        for r in done:
            prefill[r.replica] += r.prompt - r.served_cached
            cold[r.replica] += r.prompt - r.served_cached > 0.5 * r.prompt and r.prompt > 2000
        print(
            f"{policy} per replica: requests {[reqs[i] for i in range(nrep)]}, prefill k-tokens "
            f"{[round(prefill[i] / 1000) for i in range(nrep)]}, long cold prefills "
            f"{[cold[i] for i in range(nrep)]}"
        )
        # Collisions: a request that arrived at a replica running a step of > 2,000 prefill tokens.
        hol = [
            r for rid, r in recs.items() if r.ttft > 0 and rid in seen and seen[rid].todo[r.replica] > 2000
        ]
        if hol:
            print(
                f"  arrived during a > 2k-token prefill step: {len(hol)}, their TTFT p50 "
                f"{statistics.median(x.ttft for x in hol) * 1000:.0f} ms; "
                f"classes {dict(Counter(x.cls for x in hol))}"
            )
        print("  " + composition(recs, seen, runs[policy][2]["ttft_p90"]))
    for policy, other in ((a, b), (b, a)):
        recs, seen, _ = runs[policy]
        orecs = runs[other][0]
        done = sorted((r for r in recs.values() if r.ttft > 0), key=lambda r: -r.ttft)
        tail = done[: max(1, len(done) // 10)]
        print(f"\n{policy}'s slowest 10% ({len(tail)}), with {other}'s fate for the same request:")
        slow = {id(r) for r in tail}
        worse = [
            rid
            for rid, r in recs.items()
            if id(r) in slow and rid in orecs and orecs[rid].ttft < 0.7 * r.ttft
        ]
        print(f"  {len(worse)} of them were < 0.7x as slow under {other}")
        print(
            "  rid     cls     prompt  cached/engine@arrival      -> rep wait/run/todo@rep  ttft   queue  "
            f"| {other}: rep ttft"
        )
        rids = {id(r): rid for rid, r in recs.items()}
        for r in tail[:n_show]:
            rid = rids[id(r)]
            s = seen.get(rid)
            o = orecs.get(rid)
            per = "?"
            if s is not None:
                per = f"{s.waiting[r.replica]}/{s.running[r.replica]}/{s.todo[r.replica]}"
            print(
                f"  {rid:7} {r.cls:7} {r.prompt:6} best {r.best_cached:5} here {r.here_cached:5} "
                f"-> {r.replica} "
                f"{per:16} {r.ttft * 1000:6.0f} {r.queue * 1000:6.0f} | "
                + (f"{o.replica} {o.ttft * 1000:6.0f} (here {o.here_cached})" if o else "-")
            )


if __name__ == "__main__":
    main()
