"""Per-pick CPU of the default profile with the cost scorer's ``evictionPrice`` off and on, side by
side in one process, interleaved per seed.

    PYTHONPATH=src python scripts/eviction_price_cost.py [--endpoints 8,64] [--seeds 3] [--held 0]

``kvgate.bench.picker_micro.bench_pick`` (the picker micro-benchmark's decision-latency cell: a warmed
prefix index, 32 shared system prompts, ~2 requests in flight per endpoint, 3,000 timed picks) with 4 KB
prompts. Prints each pick's CPU time (the thread's own) p50 / p99 and the wall p50 / p99 in microseconds;
compare within one run only (the machine's load moves them). Run it with another tree's ``src`` on
``PYTHONPATH`` for that tree's figures.

``--held N,M,...`` instead: the price alone as the prefixes held grow: a ledger on 8 replicas holding N
reused session contexts (each placed by a pick that found its earlier turn cached there), then 2,000
calls of ``EvictionLedger.prices`` for 8 candidates, CPU time per call in microseconds: on a tree with
the grid (session 20 on) the grid's (the scorer's) and the exact per-prefix sum's (``exact=True``, the
yardstick, not tuned for speed); on an older tree its own (the per-prefix loop).
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import yaml

from kvgate.bench.picker_micro import bench_pick
from kvgate.config.policies import policy_yaml


def held_cost(n_held: int) -> tuple[float, float, int]:
    """(grid us, exact us, prefixes held) per ``prices`` call for 8 candidates with ``n_held`` held."""
    import time

    from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
    from kvgate.scheduling.plugins import eviction_price as ev

    led = ev.EvictionLedger()
    addrs = [f"10.0.0.{i}:8000" for i in range(8)]
    cap = 27_000 * 16.0
    now = 0.0
    grid = hasattr(ev.EvictionLedger, "price_exact")
    more = (cap,) if grid else ()
    for s in range(n_held):  # a session's first turn, then its second finding the first cached
        a = addrs[s % 8]
        first = [s * 1_000 + j for j in range(20)]
        led.picked(a, first, 0, 1_280.0, 1_280.0, cap * 0.9, now, *more)
        now += 0.001
    for s in range(n_held):
        a = addrs[s % 8]
        first = [s * 1_000 + j for j in range(20)]
        led.picked(a, [*first, s * 1_000 + 500], 20, 1_344.0, 64.0, cap * 0.9, now + 2.0, *more)
    eps = [Endpoint(address=a, metrics=EndpointMetrics(num_gpu_blocks=27_000, block_size=16)) for a in addrs]
    unc = [640.0] * 8
    out: list[float] = []
    for exact in (False, True) if grid else (True,):
        kw = {"exact": exact} if grid else {}
        t0 = time.thread_time_ns()
        for i in range(2_000):
            led.prices(eps, unc, 128.0, 2.0, now + 2.0, (i,), **kw)
        out.append((time.thread_time_ns() - t0) / 2_000 / 1_000)
    return (out[0] if grid else float("nan")), out[-1], led.sizes()["held"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", default="8,64", help="comma-separated endpoint counts")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--held", default="", help="comma-separated prefix counts: the price alone as they grow")
    args = ap.parse_args()
    if args.held:
        for n in (int(x) for x in args.held.split(",")):
            grid, exact, held = held_cost(n)
            print(f"{held:>6} held on 8 replicas: prices() grid {grid:.1f} us, per-prefix sum {exact:.1f} us")
        return
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
