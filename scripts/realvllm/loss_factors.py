"""Why kvgate's mean TTFT loses to sglang-router's in some ``vs_sglang.py`` pass pairs (issue #16, rv17).

For every kvgate pass (any kvgate variant: default, base tree, pinned ``/cpuN``) and the sglang-router
pass beside it (pinned alike), from the runs' ``--json`` files: the mean-TTFT ratio, the difference in ms
split into placement + per-request cost at hits + at misses (``kvgate.realvllm.paired.split_difference``),
each router's CPU seconds over the pass (``/proc``, the router's process or process group), the vLLM API
servers' CPU over each pass, the machine's 1-minute load average over the pair (the four readings at the
passes' starts and ends), and vLLM's own TTFT ratio. Then, over every pair: the correlation of the log
ratio with each, and the pairs by kvgate's CPU per pass and by load (the losing pairs' two conditions).

    cd docs/benchmarks/realvllm-runs
    PYTHONPATH=../../../src python ../../../scripts/realvllm/loss_factors.py *.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from kvgate.realvllm.paired import split_difference, spread

SGLANG = "sglang-router cache_aware"
DEFAULT = "kvgate (default, --kv-events auto)"
PIN_MARK = ", router on CPU "  # (vs_sglang.py's suffix for a pinned router's passes)
CPU_EDGES = (0.35, 0.75)  # kvgate's CPU per 40-request pass (s): session 8 on / sessions 7-8 / before
LOAD_EDGE = 5.0  # load average on the 2 cores: above it the runs' documented losses


def pairs(doc: dict[str, Any], run: str, skip_no_gap: bool = True) -> list[dict[str, Any]]:
    if skip_no_gap and not doc.get("args", {}).get("gap"):
        return []  # back to back: vLLM CPU's 1 s busy-spin decides (§4.1), not the routers
    out = []
    for name, ps in doc.get("passes", {}).items():
        if not name.startswith("kvgate"):
            continue
        at = name.find(PIN_MARK)
        sg = doc["passes"].get(SGLANG + ("" if at < 0 else name[at:]))
        if not sg or len(sg) != len(ps):
            continue
        for i, (a, b) in enumerate(zip(ps, sg, strict=True)):
            d = split_difference(a["records"], b["records"])
            loads = [p[k] for p in (a, b) for k in ("load_start", "load_end")]
            out.append({
                "run": run, "router": name, "pass": i, "ratio": a["mean_ttft_ms"] / b["mean_ttft_ms"],
                "diff": d, "cpu_a": a.get("router_cpu_s", math.nan), "cpu_b": b.get("router_cpu_s", math.nan),
                "api_a": a.get("api_cpu_s", math.nan), "api_b": b.get("api_cpu_s", math.nan),
                "load": statistics.fmean(loads),
                "vllm_side": a["server_ttft_ms"] / b["server_ttft_ms"],
            })  # fmt: skip
    return out


def corr(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (sx * sy)


def line(part: list[dict[str, Any]]) -> str:
    if not part:
        return "none"

    def mean(field: str) -> float:
        return statistics.fmean(getattr(p["diff"], field) for p in part)

    return (
        f"{spread(p['ratio'] for p in part)}; mean difference {mean('total'):+.1f} ms = placement "
        f"{mean('placement'):+.1f} + hits {mean('hit_cost'):+.1f} + misses {mean('miss_cost'):+.1f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="vs_sglang.py --json files")
    ap.add_argument("--quiet", action="store_true", help="no per-pair rows, only the summaries")
    args = ap.parse_args()
    rows = []
    for f in args.runs:
        doc = json.loads(Path(f).read_text())
        rows += pairs(doc, Path(f).stem)
    rows = [r for r in rows if not math.isnan(r["diff"].placement) and not math.isnan(r["cpu_a"])]
    if not args.quiet:
        print(
            "run, kvgate variant, pass: ratio, difference = placement + hits + misses (ms) | router CPU "
            "per pass, kvgate / sglang-router | API servers' CPU per pass | load | vLLM-side ratio"
        )
        for r in rows:
            d = r["diff"]
            who = r["router"].replace(DEFAULT, "kvgate")
            print(f"{r['run']:20s} {who:32s} {r['pass']:d}: {r['ratio']:5.2f}x {d.total:+6.1f} = "
                  f"{d.placement:+6.1f} {d.hit_cost:+6.1f} {d.miss_cost:+6.1f} | {r['cpu_a']:4.2f} / "
                  f"{r['cpu_b']:4.2f} s | {r['api_a']:4.2f} / {r['api_b']:4.2f} s | {r['load']:4.1f} | "
                  f"{r['vllm_side']:.2f}x")  # fmt: skip
    lr = [math.log(r["ratio"]) for r in rows]
    print(f"\n{len(rows)} pass pairs: {line(rows)}")
    print("correlation with log(mean TTFT ratio):")
    for label, xs in (
        ("load average", [r["load"] for r in rows]),
        ("kvgate's CPU per pass", [r["cpu_a"] for r in rows]),
        ("kvgate's minus sglang-router's CPU per pass", [r["cpu_a"] - r["cpu_b"] for r in rows]),
        ("API servers' CPU, kvgate's pass minus sglang's", [r["api_a"] - r["api_b"] for r in rows]),
        ("kvgate's CPU per pass x load", [r["cpu_a"] * r["load"] for r in rows]),
        ("log vLLM-side TTFT ratio", [math.log(r["vllm_side"]) for r in rows]),
        ("per-request cost (hits + misses, ms)", [r["diff"].hit_cost + r["diff"].miss_cost for r in rows]),
        ("placement (ms)", [r["diff"].placement for r in rows]),
    ):
        print(f"  {label:48s} {corr(xs, lr):+.2f}")
    print("by kvgate's CPU per pass and the load average:")
    lo, hi = CPU_EDGES
    for cl, ch in ((0.0, lo), (lo, hi), (hi, math.inf)):
        for ll, lh in ((0.0, LOAD_EDGE), (LOAD_EDGE, math.inf)):
            part = [r for r in rows if cl <= r["cpu_a"] < ch and ll <= r["load"] < lh]
            print(f"  CPU {cl:.2f}-{ch:.2f} s, load {ll:.0f}-{lh:.0f}: n {len(part):3d}  {line(part)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
