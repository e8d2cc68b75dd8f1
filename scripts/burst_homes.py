"""Where each class of a mixed run's measured requests went, and each burst tenant's requests per replica.

    PYTHONPATH=src python scripts/burst_homes.py FAMILY[:FIELD=N,...] QPS SEED POLICY [POLICY...]

(e.g. ``a:tenant_prefix=4096 7.5 1 kvgate kvgate-precise``: the approximate profile keeps a hot
tenant's bursts on one holder, the precise one spreads them.)
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from typing import Any

from sim_setup import family
from tail_breakdown import instrument, mixed_class

from kvgate.bench.multiturn import mixed_sim


def main() -> None:
    fam = family(sys.argv[1])
    qps, seed = float(sys.argv[2]), int(sys.argv[3])
    for pol in sys.argv[4:]:
        report(mixed_sim(fam, pol, qps, seed), pol)


def report(sim: Any, pol: str) -> None:
    recs = instrument(sim, mixed_class)
    sim.run()
    by: defaultdict[str, Counter[int]] = defaultdict(Counter)
    groups: defaultdict[str, Counter[int]] = defaultdict(Counter)
    for r in recs.values():
        by[r.cls][r.replica] += 1
        if r.cls == "burst":
            groups[r.group][r.replica] += 1
    n = len(sim.replicas)
    print(pol)
    for c, v in by.items():
        print("  ", c, [v[i] for i in range(n)])
    for g in sorted(groups):
        print("   tenant", g, [groups[g][i] for i in range(n)])


if __name__ == "__main__":
    main()
