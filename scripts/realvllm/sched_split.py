"""Where a request's time went by process, from ``vs_sglang.py --json`` files with per-request
schedstat fields (``router_``, ``loop_``, ``api_``, ``engine_``, ``client_`` ``run_ms`` / ``wait_ms``: CPU
time and time runnable but waiting for a core, summed over each process's threads (``loop``: kvgate's
main thread, its event loop, alone), send to end of stream; #16).

Per router over all passes given: the mean TTFT, the mean of each field, and the same over its slow
requests (TTFT over ``--slow`` x the median of its pass's hits or misses, as the request was): whether a
stall is work (run) or waiting for a core (wait), and in which process.

    python scripts/realvllm/sched_split.py docs/benchmarks/realvllm-runs/s4-post.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

PARTS = ("router", "loop", "api", "engine", "client")


def ttft(r: dict[str, Any]) -> float:
    return 1000 * (r["c_first"] - r["send"])


def is_hit(r: dict[str, Any]) -> bool:
    return r.get("hit_tokens", 0) >= r.get("prompt_tokens", 1) / 2


def slow_ones(records: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    """The requests whose TTFT is over ``factor`` x the median of their kind (hit / miss) in the pass."""
    med = {}
    for kind in (True, False):
        ts = [ttft(r) for r in records if is_hit(r) == kind]
        med[kind] = statistics.median(ts) if ts else float("inf")
    return [r for r in records if ttft(r) > factor * med[is_hit(r)]]


def row(label: str, recs: list[dict[str, Any]]) -> str:
    if not recs:
        return f"  {label:34s} (none)"
    cells = " ".join(
        f"{p} {statistics.fmean(r[f'{p}_run_ms'] for r in recs):5.1f}/"
        f"{statistics.fmean(r[f'{p}_wait_ms'] for r in recs):5.1f}"
        for p in PARTS
        if f"{p}_run_ms" in recs[0]  # (no client fields in the first runs)
    )
    return f"  {label:34s} n {len(recs):3d}  TTFT {statistics.fmean(map(ttft, recs)):6.1f}  {cells}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--slow", type=float, default=1.5, help="slow: TTFT over this x its kind's median")
    args = ap.parse_args()
    by: dict[str, list[list[dict[str, Any]]]] = {}
    for f in args.files:
        with open(f) as fh:
            for name, ps in json.load(fh)["passes"].items():
                by.setdefault(name, []).extend(
                    p["records"] for p in ps if p["records"] and "router_run_ms" in p["records"][0]
                )
    print("mean ms per request, send to end of stream: process run (on a CPU) / wait (runnable, no core)")
    for name, passes in by.items():
        if not passes:
            continue
        every = [r for p in passes for r in p]
        slow = [r for p in passes for r in slow_ones(p, args.slow)]
        print(f"{name} ({len(passes)} passes)")
        print(row("all requests", every))
        print(row("hits", [r for r in every if is_hit(r)]))
        print(row("misses", [r for r in every if not is_hit(r)]))
        print(row(f"slow (> {args.slow}x its kind's median)", slow))


if __name__ == "__main__":
    main()
