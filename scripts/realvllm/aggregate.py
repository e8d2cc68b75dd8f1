"""Combine ``vs_sglang.py`` runs (one per seed): kvgate over sglang-router cache_aware, pass by pass.

Each argument is a run's ``--json`` file or its printed log (runs made before ``--json``). For every run:
the hit-rate ratio (mean of passes) and the paired mean-TTFT ratios (each kvgate pass over the
sglang-router pass next to it); then over all runs: the geomean, min and max of the per-run geomeans
and of every pass pair, and how many are <= 1.0x (the goal: mean TTFT <= sglang-router's); the pairs
by the machine's load average during them (JSON runs), split at its median.

    PYTHONPATH=src .venv/bin/python scripts/realvllm/aggregate.py runs/s1.json runs/s2.log ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from kvgate.realvllm.paired import (
    by_router,
    compare,
    defined_ratios,
    hit_miss_split,
    paired_ratios,
    passes_from_json,
    passes_from_log,
    spread,
    spread_line,
)

SLOW_MS = 150  # ~2x a miss's median TTFT here: a stall, not a prefill


def ttfts(p: dict) -> list[float]:
    return [1000 * (r["c_first"] - r["send"]) for r in p["records"]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="vs_sglang.py --json files or printed logs")
    ap.add_argument("--a", default="kvgate", help="router name prefix over ...")
    ap.add_argument("--b", default="sglang", help="... this one")
    args = ap.parse_args()
    per_run, pairs, p90s, splits = [], [], [], []
    loads: list[tuple[float, float]] = []
    print(f"{'run':40s} {'hit ratio':>9s}  mean TTFT ratio per pass pair   run geomean   p90 per pass")
    for f in args.runs:
        text = Path(f).read_text()
        doc = json.loads(text) if f.endswith(".json") else None
        passes = passes_from_json(doc) if doc else passes_from_log(text)
        c = compare(passes, args.a, args.b)
        if doc:
            ra, rb = (by_router(passes, r)[0].router for r in (args.a, args.b))
            splits.append((Path(f).name, doc, ra, rb))
            for pa, pb, r in zip(doc["passes"][ra], doc["passes"][rb], c.ttft_ratios, strict=True):
                ends = [p[k] for p in (pa, pb) for k in ("load_start", "load_end")]
                loads.append((statistics.fmean(ends), r))
        per_run.append(c.ttft.geomean)
        pairs += c.ttft_ratios
        p90s += c.p90_ratios
        print(f"{Path(f).name:40s} {c.hit_ratio:8.2f}x  {', '.join(f'{r:.2f}x' for r in c.ttft_ratios):30s}"
              f"  {c.ttft.geomean:9.2f}x   {', '.join(f'{r:.2f}x' for r in c.p90_ratios)}")  # fmt: skip
    print(f"mean TTFT, per-run geomeans ({len(per_run)} runs): {spread(per_run)}")
    print(f"mean TTFT, every pass pair ({len(pairs)} pairs):   {spread(pairs)}")
    print(f"p90 TTFT, every pass pair ({len(p90s)} pairs):    {spread(p90s)}")
    if loads:
        # The machine's 1-minute load average (2 cores, shared; the run's own servers count) over each
        # pair's two passes, start and end; split at its median.
        cut = statistics.median(load for load, _ in loads)
        print(f"mean TTFT by load average over the pair's passes (JSON runs; median {cut:.1f}):")
        print("  " + ", ".join(f"{load:.1f}: {r:.2f}x" for load, r in sorted(loads)))
        for label, part in (("<=", [r for load, r in loads if load <= cut]),
                            (">", [r for load, r in loads if load > cut])):  # fmt: skip
            print(f"  load {label} {cut:.1f} ({len(part)} pairs): {spread(part) if part else 'none'}")
    if not splits:
        return 0
    # Background CPU: the router's process tree and the two vLLM API servers, per 40-request pass.
    print("\nCPU per pass, mean of a run's passes: router / vLLM API servers (s)")
    for name, doc, _, _ in splits:
        cells = [
            f"{router}: {statistics.fmean(p['router_cpu_s'] for p in ps):.2f} / "
            f"{statistics.fmean(p['api_cpu_s'] for p in ps):.2f}"
            for router, ps in doc["passes"].items()
            if ps and "router_cpu_s" in ps[0] and "api_cpu_s" in ps[0]
        ]
        print(f"{name:30s} " + "; ".join(cells))
    # Placement vs per-request cost: hits (>= half the prompt cached) and misses, per pass.
    print("\nper pass: hits x mean TTFT of a hit + misses x mean TTFT of a miss (ms)")
    hit_r, miss_r, med_r, slow = [], [], [], {args.a: 0, args.b: 0}
    hit_out = miss_out = 0  # pass pairs where a side had no hits (or no misses): no mean to compare
    for name, doc, ra, rb in splits:
        sa = [hit_miss_split(p["records"]) for p in doc["passes"][ra]]
        sb = [hit_miss_split(p["records"]) for p in doc["passes"][rb]]
        for label, ss in ((args.a, sa), (args.b, sb)):
            terms = (f"{s.hits}x{s.hit_ms:.0f} + {s.misses}x{s.miss_ms:.0f}" for s in ss)
            print(f"{name:30s} {label:8s} " + "  ".join(terms))
        kept, out = defined_ratios([s.hit_ms for s in sa], [s.hit_ms for s in sb])
        hit_r, hit_out = hit_r + kept, hit_out + out
        med = {r: [statistics.median(ttfts(p)) for p in doc["passes"][r]] for r in (ra, rb)}
        med_r += paired_ratios(med[ra], med[rb])
        for label, r in ((args.a, ra), (args.b, rb)):
            slow[label] += sum(t > SLOW_MS for p in doc["passes"][r] for t in ttfts(p))
        kept, out = defined_ratios([s.miss_ms for s in sa], [s.miss_ms for s in sb])
        miss_r, miss_out = miss_r + kept, miss_out + out
    print(f"TTFT of a hit, {args.a} over {args.b}, every pass pair:  {spread_line(hit_r, hit_out)}")
    print(f"TTFT of a miss, {args.a} over {args.b}, every pass pair: {spread_line(miss_r, miss_out)}")
    print(f"median TTFT, {args.a} over {args.b}, every pass pair:   {spread(med_r)}")
    print(f"requests over {SLOW_MS} ms: {slow}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
