"""A fresh gateway's first requests against the rest, from ``vs_sglang.py --json`` files (issue #16).

Per run: kvgate's mean TTFT over sglang-router's on requests 1-8 and 9-40 of each pass pair. Over all
runs: kvgate's ``x-kvgate-timing`` steps (mean ms) on requests 1-8 vs 9-40, and each router's mean TTFT
of a miss / hit (at least half the prompt cached) on requests 1-8 vs 9-40.

    python scripts/realvllm/startup_split.py docs/benchmarks/realvllm-runs/s4.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

FIRST = 8
STEPS = (("pick", "parsed", "picked"), ("write", "picked", "sent"), ("upstream head", "sent", "head"),
         ("vLLM first chunk", "sent", "first"), ("relay", "first", "c_first"))  # fmt: skip


def ttft(r: dict[str, Any]) -> float:
    return 1000 * (r["c_first"] - r["send"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    steps: dict[tuple[str, str], list[float]] = {}
    split: dict[tuple[str, str, str], list[float]] = {}
    for f in args.files:
        with open(f) as fh:
            passes = json.load(fh)["passes"]
        kv = next(v for k, v in passes.items() if k.startswith("kvgate"))
        sg = next(v for k, v in passes.items() if k.startswith("sglang"))
        pairs = []
        for a, b in zip(kv, sg, strict=False):
            ra, rb = a["records"], b["records"]
            first = statistics.fmean(map(ttft, ra[:FIRST])) / statistics.fmean(map(ttft, rb[:FIRST]))
            rest = statistics.fmean(map(ttft, ra[FIRST:])) / statistics.fmean(map(ttft, rb[FIRST:]))
            pairs.append(f"{first:.2f}x / {rest:.2f}x")
        print(f"{f}: kvgate / sglang-router mean TTFT, requests 1-{FIRST} / {FIRST + 1}-: {', '.join(pairs)}")
        for name, ps in passes.items():
            router = name.split()[0].rstrip(",")
            for p in ps:
                for i, r in enumerate(p["records"]):
                    part = f"1-{FIRST}" if i < FIRST else f"{FIRST + 1}-"
                    hit = r.get("hit_tokens", 0) >= r.get("prompt_tokens", 1) / 2
                    split.setdefault((router, part, "hit" if hit else "miss"), []).append(ttft(r))
                    if router == "kvgate" and "picked" in r:
                        for label, x, y in STEPS:
                            steps.setdefault((label, part), []).append(1000 * (r[y] - r[x]))
    print(f"kvgate steps, mean ms, requests 1-{FIRST} vs {FIRST + 1}-:")
    for label, _, _ in STEPS:
        a, b = steps.get((label, f"1-{FIRST}"), [0.0]), steps.get((label, f"{FIRST + 1}-"), [0.0])
        print(f"  {label:18s} {statistics.fmean(a):6.1f} vs {statistics.fmean(b):6.1f}")
    print(f"mean TTFT of a miss / hit, requests 1-{FIRST} vs {FIRST + 1}- (ms, count):")
    for (router, part, kind), v in sorted(split.items()):
        print(f"  {router:14s} {part:5s} {kind:4s} {statistics.fmean(v):6.1f} ({len(v)})")


if __name__ == "__main__":
    main()
