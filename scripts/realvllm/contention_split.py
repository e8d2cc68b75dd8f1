"""Whose CPU a pass pair's mean-TTFT difference goes with: the router's own, the vLLM servers', or other work
on the machine (rv36, issue #16).

For each pass pair (pass i of router ``--a`` beside pass i of ``--b``, as ``aggregate.py`` pairs them) of
``vs_sglang.py --json`` runs, per request means (ms) over the pass: TTFT and the part outside vLLM (client
TTFT - vLLM's own TTFT), vLLM's prefill per 1k tokens it computed, the router's CPU and its event loop's
(kvgate's main thread; sglang-router: all its threads) wait for a core, the served server's CPU and wait
(all its threads), the vLLM API servers' CPU; and, in runs that recorded the whole machine (session 36 on),
the request's window (send to the stream's end; two cores give twice it), the CPU other work took in it
(machine busy - router - servers - client) and the CPU pressure ("some": time in which a runnable task
waited). Then per pass: each router's and each server's CPU seconds, and other work's. Last, the bound: a
router's extra CPU in a request's window (its own plus the API servers', a over b) is the most of the two
cores it can have taken from vLLM there; a TTFT difference far above it is not the router's CPU taking
vLLM's.

    cd docs/benchmarks/realvllm-s36; PYTHONPATH=../../../src \\
        python ../../../scripts/realvllm/contention_split.py s57-session36.json ... \\
        --a "kvgate (default, --kv-events auto)" --b "sglang-router cache_aware"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def arm(doc: dict[str, Any], name: str) -> str:
    """The pass name ``name`` is (exactly), else the one it is the only prefix of."""
    if name in doc["passes"]:
        return name
    hits = [k for k in doc["passes"] if k.startswith(name)]
    if len(hits) != 1:
        raise SystemExit(f"{name!r} names {len(hits)} of {sorted(doc['passes'])}")
    return hits[0]


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def request_means(p: dict[str, Any]) -> dict[str, float]:
    """Per request means (ms) of one pass; keys a run did not record are nan."""
    recs = p["records"]
    out = {
        "ttft": mean([1000 * (r["c_first"] - r["send"]) for r in recs]),
        "outside": mean(
            [1000 * (r["c_first"] - r["send"]) - r["v_ttft_ms"] for r in recs if "v_ttft_ms" in r]
        ),
        "router_run": mean([r["router_run_ms"] for r in recs]),
        # kvgate's event loop is its main thread ("loop"); sglang-router's work is spread over its threads.
        "loop_wait": mean([r["loop_wait_ms"] if r.get("loop_run_ms") else r["router_wait_ms"] for r in recs]),
        "api_run": mean([r["api_run_ms"] for r in recs]),
        "served_run": mean([r[f"server{r['server']}_run_ms"] for r in recs if r["server"] >= 0]),
        "served_wait": mean([r[f"server{r['server']}_wait_ms"] for r in recs if r["server"] >= 0]),
    }
    done = [r for r in recs if "v_prefill_ms" in r and r["prompt_tokens"] > r["hit_tokens"]]
    tokens = sum(r["prompt_tokens"] - r["hit_tokens"] for r in done)
    out["prefill_per_1k"] = 1000 * sum(r["v_prefill_ms"] for r in done) / tokens if tokens else float("nan")
    ours = ("router_run_ms", "api_run_ms", "engine_run_ms", "client_run_ms")
    machine = [r for r in recs if "machine_busy_ms" in r]
    out["others_cpu"] = mean([r["machine_busy_ms"] - sum(r[k] for k in ours) for r in machine])
    out["window"] = mean([1000 * (r["end"] - r["send"]) for r in machine if "end" in r])
    out["psi_some"] = mean([r["psi_some_ms"] for r in machine])
    return out


def pass_cpu(p: dict[str, Any]) -> str:
    servers = p.get("server_cpu_list")
    if servers is None:  # (runs before session 36: each server's threads over the pass, summed)
        servers = [
            sum(v[0] for v in p["threads"][k].values()) / 1000 for k in sorted(p["threads"]) if k != "router"
        ]
    others = p.get("others_cpu_s")
    return f"router {p['router_cpu_s']:.2f} s, servers {', '.join(f'{s:.1f}' for s in servers)} s" + (
        "" if others is None else f", other work {others:.1f} s of {p['machine_busy_s']:.1f} busy"
    )


COLS = (
    ("TTFT", "ttft"),
    ("outside vLLM", "outside"),
    ("prefill ms/1k tok", "prefill_per_1k"),
    ("router CPU", "router_run"),
    ("loop wait", "loop_wait"),
    ("API CPU", "api_run"),
    ("served CPU / wait", None),
    ("request window", "window"),
    ("other work's CPU", "others_cpu"),
    ("CPU pressure", "psi_some"),
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="vs_sglang.py --json files")
    ap.add_argument("--a", default="kvgate (default, --kv-events auto)")
    ap.add_argument("--b", default="sglang-router cache_aware")
    args = ap.parse_args()
    print(
        "| pass pair | load a; b | "
        + " | ".join(c for c, _ in COLS)
        + " | a's extra CPU in a window | diff |"
    )
    print("|---" * (len(COLS) + 4) + "|")
    notes, bounds = [], []
    for f in args.runs:
        doc = json.loads(Path(f).read_text())
        na, nb = arm(doc, args.a), arm(doc, args.b)
        for i, (pa, pb) in enumerate(zip(doc["passes"][na], doc["passes"][nb], strict=True)):
            a, b = request_means(pa), request_means(pb)
            cells = []
            for _, k in COLS:
                if k is None:
                    ra, rb = (f"{x['served_run']:.0f} / {x['served_wait']:.0f}" for x in (a, b))
                    cells.append(f"{ra}; {rb}")
                else:
                    cells.append(f"{a[k]:.1f} / {b[k]:.1f}".replace("nan", "-"))
            extra = (a["router_run"] - b["router_run"]) + (a["api_run"] - b["api_run"])
            diff = a["ttft"] - b["ttft"]
            bounds.append((extra, diff))
            load = f"{pa['load_start']:.1f}-{pa['load_end']:.1f}; {pb['load_start']:.1f}-{pb['load_end']:.1f}"
            print(
                f"| {Path(f).name}, {i} | {load} | " + " | ".join(cells) + f" | {extra:+.1f} | {diff:+.1f} |"
            )
            notes.append(f"{Path(f).name} pass {i}: a {pass_cpu(pa)}; b {pass_cpu(pb)}")
    print("\nCPU over each pass (a; b):")
    for n in notes:
        print("  " + n)
    over = [(e, d) for e, d in bounds if d > 0]
    print(
        f"\n{len(over)} of {len(bounds)} pairs a lost; there a's extra CPU in a request's window (router + "
        f"API servers, ms) against the TTFT lost: "
        + (", ".join(f"{e:+.1f} / {d:+.1f}" for e, d in over) or "(none)")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
