"""Per router, a request's cost by whether it went to the server the request before it went to.

``vs_sglang.py`` sends one request at a time, 1.2 s apart; a router that spreads tenants over the two
servers sends about half its requests to the server that did NOT serve the request before (a "switch"),
one that keeps every tenant on one server never does. This groups every router's requests (after a
pass's first ``--first``, a fresh router's own start-up) by hit or miss (>= half the prompt's tokens
cached) and same server or switch, and prints the means of the client's TTFT, vLLM's own TTFT and prefill
(its histograms), the time outside vLLM, the router's wait for a core (all its threads, and kvgate's event
loop alone), kvgate's time from its write upstream to its read of the first chunk beyond vLLM's own TTFT,
and the vLLM processes' (engine cores and workers, both servers) CPU and wait for a core in the request's
window (``/proc`` schedstat), and where recorded (runs since session 25) the served server's CPU and wait
and the other server's wait apart.

    cd docs/benchmarks/realvllm-runs
    PYTHONPATH=../../../src python ../../../scripts/realvllm/switch_split.py s34-session24.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FIELDS = (
    ("ttft", "TTFT"),
    ("v_ttft_ms", "vLLM TTFT"),
    ("v_prefill_ms", "prefill"),
    ("outside", "outside"),
    ("router_wait_ms", "router wait"),
    ("loop_wait_ms", "router loop wait"),
    ("upstream_extra", "sent->first - vLLM TTFT"),
    ("engine_run_ms", "engine CPU"),
    ("engine_wait_ms", "engine wait"),
    ("served_run_ms", "served server's CPU"),
    ("served_wait_ms", "served server's wait"),
    ("other_wait_ms", "other server's wait"),
)


def is_hit(r: dict[str, float]) -> bool:
    return r["hit_tokens"] >= 0.5 * r["prompt_tokens"]


def values(r: dict[str, float]) -> dict[str, float]:
    out = {"ttft": 1000 * (r["c_first"] - r["send"])}
    out.update({k: r[k] for k, _ in FIELDS if k in r})
    if "v_ttft_ms" in r:
        out["outside"] = out["ttft"] - r["v_ttft_ms"]
        if "sent" in r and "first" in r:  # kvgate's marks: from its write upstream to its read of the first
            out["upstream_extra"] = 1000 * (r["first"] - r["sent"]) - r["v_ttft_ms"]  # chunk, beyond vLLM's
    # Runs since session 25 record each server's process group apart (two servers).
    s, o = int(r["server"]), 1 - int(r["server"])
    if f"server{s}_wait_ms" in r and f"server{o}_wait_ms" in r:
        out["served_wait_ms"], out["other_wait_ms"] = r[f"server{s}_wait_ms"], r[f"server{o}_wait_ms"]
        if f"server{s}_run_ms" in r:
            out["served_run_ms"] = r[f"server{s}_run_ms"]
    return out


def groups(
    records: Sequence[dict[str, float]], first: int
) -> Iterable[tuple[tuple[str, str], dict[str, float]]]:
    """((hit or miss, same or switch), the request's values) for each request of one pass after its first
    ``first`` whose server, and the previous request's, are known."""
    for j in range(max(first, 1), len(records)):
        r, before = records[j], records[j - 1]
        if r["server"] < 0 or before["server"] < 0:
            continue
        where = "same" if r["server"] == before["server"] else "switch"
        yield ("hit" if is_hit(r) else "miss", where), values(r)


def table(
    docs: Sequence[dict[str, Any]], first: int
) -> dict[str, dict[tuple[str, str], list[dict[str, float]]]]:
    """Router -> (hit or miss, same or switch) -> the requests' values, over every pass of every run."""
    out: dict[str, dict[tuple[str, str], list[dict[str, float]]]] = {}
    for doc in docs:
        for name, passes in doc["passes"].items():
            for p in passes:
                for key, v in groups(p["records"], first):
                    out.setdefault(name, {}).setdefault(key, []).append(v)
    return out


KVGATE = "kvgate (default, --kv-events auto)"
SGLANG = "sglang-router cache_aware"


def contributions(
    ka: Sequence[dict[str, float]], sg: Sequence[dict[str, float]], first: int
) -> dict[str, float]:
    """A kvgate pass against the sglang-router pass beside it (the same prompts in the same order): the
    difference of their mean TTFTs (ms) split exactly by kvgate's request j, as (1/n) x the sum of
    (kvgate's TTFT - sglang-router's) over the requests j of each part: a pass's first ``first``
    requests, later ones to the previous request's server ("same"), later ones to the other ("switch"),
    later ones whose server is not known ("unknown")."""
    out = dict.fromkeys(("first", "same", "switch", "unknown"), 0.0)
    n = len(ka)
    for j, (a, b) in enumerate(zip(ka, sg, strict=True)):
        d = 1000 * ((a["c_first"] - a["send"]) - (b["c_first"] - b["send"])) / n
        if j < first:
            part = "first"
        elif a["server"] < 0 or ka[j - 1]["server"] < 0:
            part = "unknown"
        else:
            part = "same" if a["server"] == ka[j - 1]["server"] else "switch"
        out[part] += d
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="vs_sglang.py --json files")
    ap.add_argument("--first", type=int, default=8, help="leave out a pass's first N requests (default 8)")
    args = ap.parse_args()
    docs = [json.loads(Path(f).read_text()) for f in args.runs]
    print("means (ms) per router, by hit or miss and by whether the server is the previous request's:")
    for name, by in table(docs, args.first).items():
        print(name)
        for key in sorted(by):
            rows = by[key]
            cells = [
                f"{label} {statistics.fmean(v[f] for v in rows):6.1f}"
                for f, label in FIELDS
                if all(f in v for v in rows)
            ]
            print(f"    {key[0]:4s} {key[1]:6s} n {len(rows):3d}: " + ", ".join(cells))
    print(f"per pass pair, {KVGATE} - {SGLANG}: the mean-TTFT difference (ms) by kvgate's request")
    for f, doc in zip(args.runs, docs, strict=True):
        ka, sg = doc["passes"].get(KVGATE, []), doc["passes"].get(SGLANG, [])
        for i, (a, b) in enumerate(zip(ka, sg, strict=True)):
            c = contributions(a["records"], b["records"], args.first)
            ratio = a["mean_ttft_ms"] / b["mean_ttft_ms"]
            print(f"    {Path(f).stem} pass {i} ({ratio:.2f}x): {sum(c.values()):+6.1f} = "
                  + " + ".join(f"{k} {v:+.1f}" for k, v in c.items() if k != "unknown" or v))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
