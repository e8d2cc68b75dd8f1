"""Per tree of an ``alternate.sh`` raw file: CPU p50 and p99 per pick, min-max (median) over its rounds x
seeds: ``python3 docs/benchmarks/picker-s34/summary.py RAW``."""

import statistics as st
import sys

cur = None
runs: dict[str, list[tuple[float, ...]]] = {}
with open(sys.argv[1]) as f:
    for line in f:
        if line.startswith("== ") and " round " in line:
            cur = line.split()[1]
            runs.setdefault(cur, [])
        elif line.startswith("(") and cur:
            runs[cur].append(tuple(float(x) for x in line.strip("()\n").split(",")))
for tree, v in runs.items():
    c50, c99 = [x[2] for x in v], [x[3] for x in v]
    print(
        f"{tree:36s} n={len(v):2d} cpu p50 {min(c50):6.1f}-{max(c50):6.1f} ({st.median(c50):6.1f})"
        f"  p99 {min(c99):6.1f}-{max(c99):6.1f} ({st.median(c99):6.1f})"
    )
