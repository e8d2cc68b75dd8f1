"""Per-pick CPU of the default profile with the cost scorer's ``evictionPrice`` off and on, side by
side in one process, interleaved per seed.

    PYTHONPATH=src python scripts/eviction_price_cost.py [--endpoints 8,64] [--seeds 3]

``kvgate.bench.picker_micro.bench_pick`` (the picker micro-benchmark's decision-latency cell: a warmed
prefix index, 32 shared system prompts, ~2 requests in flight per endpoint, 3,000 timed picks) with 4 KB
prompts. Prints each pick's CPU time (the thread's own) p50 / p99 and the wall p50 / p99 in microseconds;
compare within one run only (the machine's load moves them). Run it with another tree's ``src`` on
``PYTHONPATH`` for that tree's figures.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import yaml

from kvgate.bench.picker_micro import bench_pick
from kvgate.config.policies import policy_yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", default="8,64", help="comma-separated endpoint counts")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    base: dict[str, Any] = yaml.safe_load(policy_yaml("kvgate"))
    docs = {}
    for name, value in (("off", False), ("on", True)):
        doc = copy.deepcopy(base)
        for plugin in doc["plugins"]:
            if plugin["type"] == "kvgate-cost-scorer":
                plugin["parameters"] = {**(plugin.get("parameters") or {}), "evictionPrice": value}
        docs[name] = doc
    size = 4096
    for n_eps in (int(x) for x in args.endpoints.split(",")):
        for seed in range(args.seeds):
            for name, doc in docs.items():
                w50, w99, c50, c99 = bench_pick(doc, n_eps, size, 3000, seed=seed)  # type: ignore[arg-type]
                print(
                    f"{n_eps} endpoints, {size} B, seed {seed}, evictionPrice {name}: "
                    f"cpu p50 {c50:.1f} p99 {c99:.1f} us (wall {w50:.1f} / {w99:.1f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
