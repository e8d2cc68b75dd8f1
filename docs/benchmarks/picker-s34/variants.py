"""Diagnostic (session 34, pick34): the picker cell (kvgate policy, 64 endpoints, 4 KB, 3,000 picks, seeds
0-2) with one default-profile feature off at a time, in one process, rounds interleaved:

    PYTHONPATH=<tree>/src python docs/benchmarks/picker-s34/variants.py ROUNDS

A variant picks otherwise (so the cell builds another state), so its difference is not that feature's code
alone."""

import statistics as st
import sys

from kvgate.bench.picker_micro import bench_pick
from kvgate.config import policies

base = policies.POLICIES["kvgate"]
SPREAD = "    coldSpread: true\n"
V = {
    "default": base,
    "sharedCopy-off": base.replace(SPREAD, SPREAD + "    sharedCopy: false\n"),
    "learnPace-off": base.replace(SPREAD, SPREAD + "    learnPace: false\n"),
    "engineLru-off": base.replace("engineLru: true", "engineLru: false"),
    "no-lora": base.replace("  - pluginRef: lora-affinity-scorer\n    weight: 5\n", ""),
    "no-filter": base.replace("  - pluginRef: header-based-testing-filter\n", ""),
}
res: dict[str, list[float]] = {k: [] for k in V}
for _ in range(int(sys.argv[1])):
    for k, y in V.items():
        policies.POLICIES["kvgate"] = y
        for s in range(3):
            res[k].append(bench_pick("kvgate", 64, 4096, 3000, seed=s)[2])
for k, v in res.items():
    print(f"{k:16s} cpu p50 median {st.median(v):6.1f}  ({min(v):.1f}-{max(v):.1f})")
