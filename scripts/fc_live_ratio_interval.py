"""How much one live run's quiet p90 flood / calm ratio can tell: a bootstrap interval from the run's own
quiet TTFTs (``kvgate bench flowcontrol --live --timing`` keeps them in the JSON's ``trace``).

    python scripts/fc_live_ratio_interval.py CALM.json [FLOOD.json] [--draws 4000] [--warmup 5]

CALM.json holds a ``*/calm`` run (and its ``*/flood`` run, unless FLOOD.json, e.g. another ``--workers``,
gives it). Each draw resamples both runs' measured quiet TTFTs (with replacement, as many as measured) and
takes the ratio of their p90s (the bench's rank: ``int(0.9 n)`` of the sorted values); printed: the ratio
of the runs themselves and the 5th-95th percentiles of the draws. Seeded (``random.Random(1)``).
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any


def p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.9 * len(xs)))]


def ttfts(doc: dict[str, Any], mix: str, warmup: float) -> list[float]:
    for name, run in doc["runs"].items():
        if name.endswith("/" + mix):
            return [row[2] for row in run["trace"] if row[1] >= warmup]
    raise SystemExit(f"no */{mix} run with a trace (run the bench with --timing)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("calm")
    ap.add_argument("flood", nargs="?")
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--warmup", type=float, default=5.0)
    a = ap.parse_args()
    with open(a.calm) as f:
        calm_doc = json.load(f)
    flood_doc = calm_doc
    if a.flood:
        with open(a.flood) as f:
            flood_doc = json.load(f)
    calm, flood = ttfts(calm_doc, "calm", a.warmup), ttfts(flood_doc, "flood", a.warmup)
    rnd = random.Random(1)
    draws = sorted(
        p90([rnd.choice(flood) for _ in flood]) / p90([rnd.choice(calm) for _ in calm])
        for _ in range(a.draws)
    )
    lo, hi = draws[int(0.05 * a.draws)], draws[int(0.95 * a.draws)]
    print(
        f"quiet requests: flood {len(flood)}, calm {len(calm)}; ratio {p90(flood) / p90(calm):.2f}, "
        f"90% bootstrap interval {lo:.2f}-{hi:.2f}, share of draws over 1.5: "
        f"{sum(1 for d in draws if d > 1.5) / a.draws:.2f}"
    )


if __name__ == "__main__":
    main()
