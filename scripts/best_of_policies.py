"""A best-of-policies bound on a mixed family: each run's p90 TTFT under several policies, and per run the
best of them (as if a router knew in advance which policy suits that run: an oracle, not a policy),
each as a ratio to sglang-cache-aware's model on the same run.

    PYTHONPATH=src:scripts python scripts/best_of_policies.py FAMILY QPS FIRST_SEED LAST_SEED POLICY...
    (POLICY: a policy name or a policy YAML; sglang-cache-aware is always run as the reference)

Prints per seed each policy's p90 (ms) and hit rate, then per policy and for the per-seed best: the
geometric mean of p90 / sglang's p90, and the runs over 1 s.
"""

from __future__ import annotations

import os
import statistics
import sys

from script_usage import usage_or_exit

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import run_once


def main() -> None:
    usage_or_exit(__doc__, 5)
    fam, qps = FAMILIES[sys.argv[1]], float(sys.argv[2])
    seeds = range(int(sys.argv[3]), int(sys.argv[4]) + 1)
    policies = sys.argv[5:]
    ratios: dict[str, list[float]] = {p: [] for p in [*policies, "best"]}
    over: dict[str, int] = dict.fromkeys(ratios, 0)
    for seed in seeds:
        ref = run_once(fam, "sglang-cache-aware", qps, seed, 120.0, 30.0)["ttft_p90"]
        cells = [f"sglang {ref * 1000:.0f}"]
        p90s = []
        for pol in policies:
            row = run_once(fam, pol, qps, seed, 120.0, 30.0)
            p90s.append(row["ttft_p90"])
            ratios[pol].append(row["ttft_p90"] / ref)
            over[pol] += row["ttft_p90"] > 1.0
            cells.append(
                f"{os.path.basename(pol)} {row['ttft_p90'] * 1000:.0f} (hit {row['prefix_hit_rate']:.3f})"
            )
        ratios["best"].append(min(p90s) / ref)
        over["best"] += min(p90s) > 1.0
        print(f"{fam.name}/{seed} @ {qps:g}: " + ", ".join(cells), flush=True)
    for pol, r in ratios.items():
        gm = statistics.geometric_mean(r)
        print(f"{os.path.basename(pol)}: gm {gm:.3f} vs sglang over {len(r)} runs, {over[pol]} over 1 s")


if __name__ == "__main__":
    main()
