"""How often the cost scorer's grid ``evictionPrice`` (session 20) picks as the exact sum it replaced, on
one mixed-simulator run.

    PYTHONPATH=src:scripts python scripts/eviction_price_agreement.py [FAMILY QPS SEED [POLICY]]

Default: family c, 6.992 req/s, seed 104 (a tuning seed), 120 s after 30 s of warm-up, with
``docs/benchmarks/policies/kvgate-eviction-price.yaml``. The run follows the grid's prices; at every
pick the cost scorer's costs are computed twice, once with the grid's prices and once with the exact
per-prefix sum (``EvictionLedger.prices(..., exact=True)``, the form mt19b validated, reading the same
ledger state), and the script counts the picks whose cheapest candidate differs, and how far the
prices differ: per candidate, ``|grid - exact|`` over the most the price may add there (its cap,
``missPenalty`` x the tokens written), over the dearest exact price of that pick where that is at least
one token, and over the exact price where that is at least one token. The prices compared are what the
cost adds (over the cheapest candidate, shared by a group, capped). Prints the counts and percentiles
(the simulator's own figures are not the point here).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import run_once
from kvgate.scheduling.plugins.eviction_price import EvictionLedger
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

POLICY = (
    Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "policies" / "kvgate-eviction-price.yaml"
)


def _q(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main(argv: list[str]) -> int:
    fam, qps, seed = (argv[0], float(argv[1]), int(argv[2])) if len(argv) >= 3 else ("c", 6.992, 104)
    policy = argv[3] if len(argv) >= 4 else str(POLICY)
    orig_costs, orig_prices = KVGateCostScorer.costs, EvictionLedger.prices
    state: dict[str, Any] = {"exact": False, "last": None}
    stats: dict[str, Any] = {"picks": 0, "differ": 0, "cap": [], "spread": [], "rel": [], "gaps": []}

    def prices(self: EvictionLedger, *a: Any, **k: Any) -> list[float] | None:
        got = orig_prices(self, *a, exact=state["exact"], **k)
        state["last"] = got
        state["caps"] = [a[3] * (unc + a[2]) for unc in a[1]]  # (uncached, out_tokens, cap)
        return got

    def costs(self: KVGateCostScorer, cycle: Any, endpoints: Any) -> list[float]:
        state["exact"], state["last"] = False, None
        grid = orig_costs(self, cycle, endpoints)
        pg = state["last"]
        if pg is None:
            return grid
        state["exact"] = True
        exact = orig_costs(self, cycle, endpoints)
        pe = state["last"]
        state["exact"] = False
        stats["picks"] += 1
        lo_g, lo_e = min(grid), min(exact)
        if {i for i, c in enumerate(grid) if c == lo_g} != {i for i, c in enumerate(exact) if c == lo_e}:
            stats["differ"] += 1
            # how far the grid's choice is from the exact choice, in the exact costs' terms
            i = grid.index(lo_g)
            stats["gaps"].append((exact[i] - lo_e) / max(lo_e, 1.0))
        top = max(pe)
        for g, e, c in zip(pg, pe, state["caps"], strict=True):
            if c > 0.0:
                stats["cap"].append(abs(g - e) / c)
            if top >= 1.0:
                stats["spread"].append(abs(g - e) / top)
            if e >= 1.0:
                stats["rel"].append(abs(g - e) / e)
        return grid

    KVGateCostScorer.costs = costs  # type: ignore[method-assign]
    EvictionLedger.prices = prices  # type: ignore[method-assign]
    row = run_once(FAMILIES[fam], policy, qps, seed, 120.0, 30.0)
    n, d = stats["picks"], stats["differ"]
    p90 = row["ttft_p90"] * 1000
    print(f"family {fam} / {seed} at {qps} req/s, {policy}: p90 {p90:.1f} ms (the grid's run)")
    print(f"picks priced {n}; cheapest candidate differs from the exact sum's in {d} ({d / max(n, 1):.2%})")
    if stats["gaps"]:
        g = stats["gaps"]
        print(
            f"  where it differs, the grid's choice costs more in the exact costs by "
            f"median {statistics.median(g):.2%}, max {max(g):.2%}"
        )
    for name, key in (
        ("|grid - exact| / the price's cap", "cap"),
        ("|grid - exact| / the pick's dearest exact price", "spread"),
        ("|grid - exact| / exact", "rel"),
    ):
        xs = stats[key]
        print(
            f"{name}: n {len(xs)}, median {_q(xs, 0.5):.4f}, p90 {_q(xs, 0.9):.4f}, p99 {_q(xs, 0.99):.4f}, "
            f"max {max(xs) if xs else float('nan'):.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
