"""Where each policy places sp8's cold prefills, and the warm requests they block (session 35, sp835).

    PYTHONPATH=src:scripts python scripts/cold_homes_s35.py FIRST LAST POLICY [POLICY ...]

The shared-prefix scenario at its knee-based 80% point (14.14 req/s, 30 s, as ``flip_runs_s31.py sp8``).
Per policy, summed over the seeds: cold requests (the best engine caches under 30%
of the prompt at arrival), the warm requests (at least 30% cached where they went) that arrived at a cold
request's replica between its arrival and its first token (blocked by it), the mean per cold request,
the customers (groups) per replica at the end (mean of per-seed max / mean over replicas) and requests
per replica (the same ratio): how evenly the policy spreads the customers whose warm requests return.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict

from request_traces import build
from script_usage import usage_or_exit
from tail_breakdown import instrument


def main() -> None:
    usage_or_exit(__doc__, 3)
    first, last, policies = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    for pol in policies:
        cold_n = blocked = 0
        cust_ratio: list[float] = []
        req_ratio: list[float] = []
        p90s: list[float] = []
        for seed in range(first, last + 1):
            _, make = build(["scenario", "shared-prefix", "14.14", str(seed), "30"])
            sim, cls = make(pol)
            recs = instrument(sim, cls)
            row = sim.run().row
            p90s.append(row["ttft_p90"] * 1000)
            done = [r for r in recs.values() if r.ttft > 0]
            warm_at: dict[int, list[float]] = defaultdict(list)
            colds = []
            for r in done:
                if r.best_cached < 0.3 * r.prompt:
                    colds.append(r)
                elif r.here_cached >= 0.3 * r.prompt:
                    warm_at[r.replica].append(r.at)
            for c in colds:
                blocked += sum(c.at < t <= c.at + c.ttft for t in warm_at[c.replica])
            cold_n += len(colds)
            homes: dict[int, set[str]] = defaultdict(set)
            for r in done:
                homes[r.replica].add(r.group)
            nrep = len(sim.replicas)
            cust = [len(homes[i]) for i in range(nrep)]
            reqs = Counter(r.replica for r in done)
            cust_ratio.append(max(cust) / statistics.fmean(cust))
            req_ratio.append(max(reqs.values()) / statistics.fmean(reqs[i] for i in range(nrep)))
        gm = statistics.geometric_mean(p90s)
        print(
            f"{pol}: p90 gm {gm:.1f} ms; cold {cold_n}, warm arrivals blocked {blocked} "
            f"({blocked / max(cold_n, 1):.2f} per cold); "
            f"customers max/mean {statistics.fmean(cust_ratio):.3f}, "
            f"requests max/mean {statistics.fmean(req_ratio):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
