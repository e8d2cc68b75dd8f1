"""Request by request: where kvgate's mean TTFT differs from sglang-router's in ``vs_sglang.py`` runs.

Every pass sends the same prompts in the same order, so request j of a kvgate pass and request j of the
sglang-router pass beside it are the same prompt. Each pair falls in one of four classes by whether each
router's server had it cached (a hit: >= half the prompt's tokens): both hit, both miss, only kvgate's
hit, only sglang-router's. The pass pair's mean-TTFT difference is exactly the sum over the classes of
(class share) x (mean difference in the class): the mixed classes are placement, the same-kind classes
per-request cost at equal cache state. Within a class, where the run recorded vLLM's own histograms
(``v_ttft_ms``, ``v_queue_ms``, ``v_prefill_ms``; ``vs_sglang.py`` after session 23), each router's TTFT
is split into vLLM's TTFT (arrival at the engine's front end to its first token) and the rest (client ->
router -> vLLM's HTTP front, the relay back), and kvgate's own marks (``x-kvgate-timing``) give its
steps. Then the same for the first ``--first`` requests of a pass (a freshly started router) and the
rest, and pass 0 against pass 1.

    cd docs/benchmarks/realvllm-runs
    PYTHONPATH=../../../src python ../../../scripts/realvllm/request_split.py s28-session23.json ...
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SGLANG = "sglang-router cache_aware"
DEFAULT = "kvgate (default, --kv-events auto)"
CLASSES = ("both hit", "both miss", "kvgate hit only", "sglang hit only")
FIELDS = ("ttft", "v_ttft_ms", "outside", "v_queue_ms", "v_prefill_ms", "router_run_ms", "router_wait_ms")
# kvgate's marks between the client's send and its first chunk (vs_sglang.KVGATE_STEPS, condensed).
MARKS = (("in", "send", "recv"), ("parse+pick", "recv", "picked"), ("write", "picked", "sent"),
         ("vLLM", "sent", "first"), ("relay", "first", "c_first"))  # fmt: skip


def is_hit(r: dict[str, float]) -> bool:
    return r["server"] >= 0 and r["hit_tokens"] >= 0.5 * r["prompt_tokens"]


def ttft(r: dict[str, float]) -> float:
    return 1000 * (r["c_first"] - r["send"])


def values(r: dict[str, float]) -> dict[str, float]:
    """A record's TTFT (ms) and, where recorded, vLLM's TTFT, queue and prefill, the time outside, and
    the router's CPU and its wait for a core (all its threads, send to end of stream; ``/proc``)."""
    out = {"ttft": ttft(r)}
    for k in ("v_ttft_ms", "v_queue_ms", "v_prefill_ms", "router_run_ms", "router_wait_ms"):
        if k in r:
            out[k] = r[k]
    if "v_ttft_ms" in r:
        out["outside"] = out["ttft"] - r["v_ttft_ms"]
    return out


def classify(a: dict[str, float], b: dict[str, float]) -> str:
    ha, hb = is_hit(a), is_hit(b)
    return CLASSES[0 if ha and hb else 1 if not ha and not hb else 2 if ha else 3]


def split(pairs: Sequence[tuple[dict[str, float], dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per class: n, share, each router's mean of every field recorded for all of the class's pairs, and
    ``contribution`` = share x (kvgate's mean TTFT - sglang-router's) in ms; the contributions add up to
    the difference of the two passes' mean TTFTs."""
    out: dict[str, dict[str, Any]] = {}
    for cls in CLASSES:
        part = [(values(a), values(b)) for a, b in pairs if classify(a, b) == cls]
        row: dict[str, Any] = {"n": len(part), "share": len(part) / len(pairs) if pairs else 0.0}
        for f in FIELDS:
            if part and all(f in va and f in vb for va, vb in part):
                row[f] = (
                    statistics.fmean(va[f] for va, _ in part),
                    statistics.fmean(vb[f] for _, vb in part),
                )
        row["contribution"] = row["share"] * (row["ttft"][0] - row["ttft"][1]) if part else 0.0
        out[cls] = row
    return out


def mark_means(records: Sequence[dict[str, float]]) -> dict[str, float]:
    """kvgate's steps (ms, means) over records that carry its marks."""
    have = [r for r in records if all(k in r for _, a, b in MARKS for k in (a, b))]
    if not have:
        return {}
    return {label: statistics.fmean(1000 * (r[b] - r[a]) for r in have) for label, a, b in MARKS}


def pass_pairs(doc: dict[str, Any]) -> list[tuple[int, list[dict[str, float]], list[dict[str, float]]]]:
    """(pass index, kvgate's records, sglang-router's records) for the unpinned default pair."""
    ka, sg = doc["passes"].get(DEFAULT), doc["passes"].get(SGLANG)
    if not ka or not sg:
        return []
    return [(i, a["records"], b["records"]) for i, (a, b) in enumerate(zip(ka, sg, strict=True))]


def fmt(row: dict[str, Any]) -> str:
    cells = [f"n {row['n']:3d}", f"{row['contribution']:+6.1f} ms of the mean"]
    for f in FIELDS:
        if f in row:
            a, b = row[f]
            cells.append(f"{f.removesuffix('_ms').removeprefix('router_')} {a:5.1f} / {b:5.1f}")
    return ", ".join(cells)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="vs_sglang.py --json files")
    ap.add_argument("--first", type=int, default=8, help="a pass's first N requests, apart (default 8)")
    args = ap.parse_args()
    everything: list[tuple[dict[str, float], dict[str, float]]] = []
    by_pass: dict[int, list[tuple[dict[str, float], dict[str, float]]]] = {}
    first: list[tuple[dict[str, float], dict[str, float]]] = []
    rest: list[tuple[dict[str, float], dict[str, float]]] = []
    kv_records: dict[str, list[dict[str, float]]] = {c: [] for c in CLASSES}
    print("per pass pair: kvgate / sglang-router means (ms) by class; contributions add to the difference")
    for f in args.runs:
        doc = json.loads(Path(f).read_text())
        for i, ka, sg in pass_pairs(doc):
            pairs = list(zip(ka, sg, strict=True))
            diff = statistics.fmean(map(ttft, ka)) - statistics.fmean(map(ttft, sg))
            ratio = statistics.fmean(map(ttft, ka)) / statistics.fmean(map(ttft, sg))
            print(f"{Path(f).stem} pass {i}: mean TTFT ratio {ratio:.2f}x, difference {diff:+.1f} ms")
            for cls, row in split(pairs).items():
                if row["n"]:
                    print(f"    {cls:16s} {fmt(row)}")
            everything += pairs
            by_pass.setdefault(i, []).extend(pairs)
            first += pairs[: args.first]
            rest += pairs[args.first :]
            for a, b in pairs:
                kv_records[classify(a, b)].append(a)
    if not everything:
        return 1
    print(f"\nall {len(everything)} request pairs (kvgate / sglang-router means, ms):")
    for cls, row in split(everything).items():
        print(f"    {cls:16s} {fmt(row)}")
        marks = mark_means(kv_records[cls])
        if marks:
            print(f"    {'':16s} kvgate's steps: " + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()))
    for label, part in ((f"first {args.first} of each pass", first), ("the rest", rest)):
        print(f"{label}:")
        for cls, row in split(part).items():
            if row["n"]:
                print(f"    {cls:16s} {fmt(row)}")
    for label, part in (
        (f"first {args.first} of each pass", first),
        ("the rest", rest),
        *((f"pass {i}", p) for i, p in sorted(by_pass.items())),
    ):
        total = sum(row["contribution"] for row in split(part).values())
        a, b = (statistics.fmean(ttft(x[k]) for x in part) for k in (0, 1))
        same = [x for x in part if classify(*x) in CLASSES[:2]]
        per_req = statistics.fmean(ttft(x) - ttft(y) for x, y in same) if same else math.nan
        print(f"{label:24s} n {len(part):3d}: mean TTFT {a:6.1f} / {b:6.1f} ms ({a / b:.2f}x, "
              f"{total:+.1f} ms); at equal cache state kvgate {per_req:+.1f} ms a request "
              f"(n {len(same)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
