"""Per-pick CPU of the default profile with the cost scorer's ``evictionPrice`` off (the profile before
mt19b) and on (the default), side by side in one process, interleaved per seed.

    PYTHONPATH=src python scripts/eviction_price_cost.py

``kvgate.bench.picker_micro.bench_pick`` (the picker micro-benchmark's decision-latency cell: a warmed
prefix index, 32 shared system prompts, ~2 requests in flight per endpoint, 3,000 timed picks) at 8 and 64
endpoints with 4 KB prompts, seeds 0-2. Prints each pick's CPU time (the thread's own) p50 / p99 and the
wall p50 / p99 in microseconds; compare within one run only (the machine's load moves them).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kvgate.bench.picker_micro import bench_pick
from kvgate.config.policies import policy_yaml


def main() -> None:
    on: dict[str, Any] = yaml.safe_load(policy_yaml("kvgate"))
    off = copy.deepcopy(on)
    for plugin in off["plugins"]:
        if plugin["type"] == "kvgate-cost-scorer":
            plugin["parameters"] = {**(plugin.get("parameters") or {}), "evictionPrice": False}
    for n_eps, size in ((8, 4096), (64, 4096)):
        for seed in range(3):
            for name, doc in (("off", off), ("on", on)):
                w50, w99, c50, c99 = bench_pick(doc, n_eps, size, 3000, seed=seed)  # type: ignore[arg-type]
                print(
                    f"{n_eps} endpoints, {size} B, seed {seed}, evictionPrice {name}: "
                    f"cpu p50 {c50:.1f} p99 {c99:.1f} us (wall {w50:.1f} / {w99:.1f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
