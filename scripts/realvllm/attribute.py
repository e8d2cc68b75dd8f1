"""Request by request: is kvgate's mean-TTFT gap to sglang-router routing or the gateway? (rv31)

``vs_sglang.py`` sends every router the same prompts in the same order, so request j of a kvgate pass
and request j of the sglang-router pass beside it are the same prompt. For each such pair this prints
both routers' pick (server), prefix-hit tokens, prefill tokens computed (prompt - hit), vLLM's own
queue / prefill / TTFT at the served server (deltas of its histograms, recorded where the count moved by
one) and the time outside vLLM (client TTFT - vLLM's TTFT); for kvgate also its own marks
(``x-kvgate-timing``): client -> gateway, parse + pick + write upstream, vLLM's HTTP front and the
sockets around it, relay to the client.

Per pass pair the mean-TTFT difference is split exactly (over the pairs where both records carry vLLM's
histograms; the others' share is shown as "unrecorded") into

- vLLM queue (a prefill queued behind another on the served server: co-scheduled work),
- vLLM prefill, itself split by a least-squares line prefill_ms = a + b x tokens computed, fitted on
  both routers' requests of the pass pair: b x (difference in tokens computed) is "more prefill
  computed" (routing), the rest "slower per token" (the same work taking longer: the core's contention),
- the rest of vLLM's TTFT (arrival at its front end -> first token, minus queue and prefill),
- outside vLLM (client <-> router <-> vLLM sockets and the router itself).

Routing = more prefill computed + queue; gateway = outside vLLM. ``--table F`` writes the per-request
table (markdown), ``--plot F`` a figure (matplotlib): per pass pair the stacked split, and per request
the difference inside vLLM against outside it.

    cd docs/benchmarks/realvllm-s31
    PYTHONPATH=../../../src python ../../../scripts/realvllm/attribute.py s45-session31.json ... \
        --table attribution-requests.md --plot attribution.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SGLANG = "sglang-router cache_aware"
DEFAULT = "kvgate (default, --kv-events auto)"
PARTS = ("queue", "more tokens", "slower per token", "vLLM rest", "outside vLLM", "unrecorded")

Rec = dict[str, Any]


def ttft(r: Rec) -> float:
    return 1000 * (r["c_first"] - r["send"])


def computed(r: Rec) -> float:
    """Prefill tokens computed: the prompt minus its prefix-cache hit (both from vLLM's counters)."""
    return max(0.0, r["prompt_tokens"] - r["hit_tokens"])


def recorded(r: Rec) -> bool:
    return all(k in r for k in ("v_ttft_ms", "v_queue_ms", "v_prefill_ms"))


def kvgate_steps(r: Rec) -> dict[str, float]:
    """kvgate's own marks (ms): client -> gateway, in the gateway before the upstream write (parse, pick,
    write), vLLM's front and the sockets (gateway's write -> its first chunk, minus vLLM's TTFT), relay."""
    if not all(k in r for k in ("recv", "sent", "first")):
        return {}
    out = {
        "in": 1000 * (r["recv"] - r["send"]),
        "gateway": 1000 * (r["sent"] - r["recv"]),
        "relay": 1000 * (r["c_first"] - r["first"]),
    }
    if "v_ttft_ms" in r:
        out["vllm_front"] = 1000 * (r["first"] - r["sent"]) - r["v_ttft_ms"]
    return out


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x; (a, b). A flat line where x does not vary."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def split(pairs: Sequence[tuple[Rec, Rec]]) -> dict[str, Any]:
    """The pass pair's mean-TTFT difference (kvgate - sglang-router, ms) into PARTS; they add up to it."""
    n = len(pairs)
    diff = statistics.fmean(ttft(a) - ttft(b) for a, b in pairs)
    both = [(a, b) for a, b in pairs if recorded(a) and recorded(b)]
    _, slope = fit([(computed(r), r["v_prefill_ms"]) for p in both for r in p])
    parts = dict.fromkeys(PARTS, 0.0)
    for a, b in both:
        parts["queue"] += a["v_queue_ms"] - b["v_queue_ms"]
        tokens = slope * (computed(a) - computed(b))
        parts["more tokens"] += tokens
        parts["slower per token"] += a["v_prefill_ms"] - b["v_prefill_ms"] - tokens
        rest_a = a["v_ttft_ms"] - a["v_queue_ms"] - a["v_prefill_ms"]
        rest_b = b["v_ttft_ms"] - b["v_queue_ms"] - b["v_prefill_ms"]
        parts["vLLM rest"] += rest_a - rest_b
        parts["outside vLLM"] += (ttft(a) - a["v_ttft_ms"]) - (ttft(b) - b["v_ttft_ms"])
    parts["unrecorded"] = sum(ttft(a) - ttft(b) for a, b in pairs if not (recorded(a) and recorded(b)))
    parts = {k: v / n for k, v in parts.items()}
    steps = [kvgate_steps(a) for a, _ in pairs]
    steps = [s for s in steps if "vllm_front" in s]
    return {
        "n": n,
        "recorded": len(both),
        "diff": diff,
        "ratio": statistics.fmean(map(ttft, (a for a, _ in pairs)))
        / statistics.fmean(map(ttft, (b for _, b in pairs))),
        "parts": parts,
        "slope_ms_per_1k": 1000 * slope,
        "computed": (
            statistics.fmean(computed(a) for a, _ in pairs),
            statistics.fmean(computed(b) for _, b in pairs),
        ),
        "queue_max": max(
            (max(a.get("v_queue_ms", 0), b.get("v_queue_ms", 0)) for a, b in pairs), default=0.0
        ),
        "same_pick": sum(a["server"] == b["server"] for a, b in pairs),
        "by_move": by_move(pairs),
        "kvgate_steps": {k: statistics.fmean(s[k] for s in steps) for k in steps[0]} if steps else {},
        "outside": tuple(
            statistics.fmean(ttft(r) - r["v_ttft_ms"] for r in rs)
            for rs in ([a for a, _ in both], [b for _, b in both])
        )
        if both
        else (float("nan"), float("nan")),
        "router_run_wait": tuple(
            (
                statistics.fmean(r["router_run_ms"] for r in rs),
                statistics.fmean(r["router_wait_ms"] for r in rs),
            )
            if all("router_run_ms" in r for r in rs)
            else (float("nan"), float("nan"))
            for rs in ([a for a, _ in pairs], [b for _, b in pairs])
        ),
    }


def by_move(pairs: Sequence[tuple[Rec, Rec]]) -> dict[str, float]:
    """The mean difference's share (ms) from requests kvgate sent to the server its previous request went
    to ("same"), to the other one ("switched"), and the pass's first request ("first"); they add up to it."""
    out = {"first": 0.0, "same": 0.0, "switched": 0.0}
    for j, (a, b) in enumerate(pairs):
        key = "first" if not j else "same" if a["server"] == pairs[j - 1][0]["server"] else "switched"
        out[key] += (ttft(a) - ttft(b)) / len(pairs)
    return out


def front_waits(records: Sequence[Rec]) -> str:
    """What kvgate's "vLLM front" step (its upstream write -> its read of the first chunk, less vLLM's
    TTFT) goes with, request by request: its event loop's wait for a core, or the API server's (both over
    the request, from /proc schedstat)."""
    rows = [(kvgate_steps(r)["vllm_front"], r["loop_wait_ms"], r["api_wait_ms"]) for r in records
            if "vllm_front" in kvgate_steps(r) and "loop_wait_ms" in r and "api_wait_ms" in r]  # fmt: skip
    if len(rows) < 3:
        return "kvgate's vLLM-front step: too few requests with the waits recorded"
    front, loop, api = ([row[k] for row in rows] for k in range(3))
    fit_loop = statistics.linear_regression(loop, front)
    return (
        f"kvgate's vLLM-front step over {len(rows)} requests: mean {statistics.fmean(front):.1f} ms, "
        f"median {statistics.median(front):.1f}; correlation with its event loop's wait for a core "
        f"{statistics.correlation(front, loop):.2f}, with the served API server's "
        f"{statistics.correlation(front, api):.2f}; front = {fit_loop.intercept:.2f} + "
        f"{fit_loop.slope:.2f} x loop wait (ms)"
    )


def pass_pairs(doc: dict[str, Any]) -> list[tuple[int, Rec, Rec, list[tuple[Rec, Rec]]]]:
    """(pass index, kvgate pass, sglang-router pass, request pairs) for the unpinned default pair."""
    ka, sg = doc["passes"].get(DEFAULT), doc["passes"].get(SGLANG)
    if not ka or not sg:
        return []
    return [
        (i, a, b, list(zip(a["records"], b["records"], strict=True)))
        for i, (a, b) in enumerate(zip(ka, sg, strict=False))
    ]


def direct_cell(doc: dict[str, Any], i: int) -> str:
    """The no-router pass of the same index (every request to server 0): mean TTFT / mean outside vLLM."""
    runs = next((v for k, v in doc["passes"].items() if k.startswith("direct, to server")), None)
    if not runs or i >= len(runs):
        return "-"
    rs = runs[i]["records"]
    out = [ttft(r) - r["v_ttft_ms"] for r in rs if recorded(r)]
    return f"{statistics.fmean(map(ttft, rs)):.1f} / {statistics.fmean(out):.1f}" if out else "-"


def cell(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def request_rows(label: str, pairs: Sequence[tuple[Rec, Rec]]) -> list[str]:
    """One markdown row a request pair: kvgate | sglang-router for each field, then the differences."""
    rows = [
        f"\n#### {label}\n",
        "| j | pick k / s (* kvgate switched) | hit tokens k / s | computed k / s | TTFT k / s "
        "| vLLM queue k / s | vLLM prefill k / s | vLLM TTFT k / s | outside vLLM k / s "
        "| kvgate in / gateway / vLLM front / relay | "
        "router run / wait k; s | diff TTFT | diff inside vLLM | diff outside |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j, (a, b) in enumerate(pairs):
        both = recorded(a) and recorded(b)
        moved = "*" if j and a["server"] != pairs[j - 1][0]["server"] else ""
        st = kvgate_steps(a)
        out_a = ttft(a) - a["v_ttft_ms"] if recorded(a) else None
        out_b = ttft(b) - b["v_ttft_ms"] if recorded(b) else None
        rows.append(
            "| "
            + " | ".join(
                [
                    str(j),
                    f"{a['server']}{moved} / {b['server']}",
                    f"{a['hit_tokens']:.0f} / {b['hit_tokens']:.0f}",
                    f"{computed(a):.0f} / {computed(b):.0f}",
                    f"{ttft(a):.1f} / {ttft(b):.1f}",
                    f"{cell(a.get('v_queue_ms'), '{:.2f}')} / {cell(b.get('v_queue_ms'), '{:.2f}')}",
                    f"{cell(a.get('v_prefill_ms'))} / {cell(b.get('v_prefill_ms'))}",
                    f"{cell(a.get('v_ttft_ms'))} / {cell(b.get('v_ttft_ms'))}",
                    f"{cell(out_a)} / {cell(out_b)}",
                    " / ".join(cell(st.get(k)) for k in ("in", "gateway", "vllm_front", "relay")),
                    f"{cell(a.get('router_run_ms'))} / {cell(a.get('router_wait_ms'))}; "
                    f"{cell(b.get('router_run_ms'))} / {cell(b.get('router_wait_ms'))}",
                    f"{ttft(a) - ttft(b):+.1f}",
                    cell(a["v_ttft_ms"] - b["v_ttft_ms"], "{:+.1f}") if both else "-",
                    cell(out_a - out_b, "{:+.1f}")
                    if both and out_a is not None and out_b is not None
                    else "-",
                ]
            )
            + " |"
        )
    return rows


def short(label: str) -> str:
    """'seed 45, pass 0' -> '45/0'."""
    seed, _, pas = label.removeprefix("seed ").partition(", pass ")
    return f"{seed}/{pas}"


def plot(path: str, results: list[tuple[str, dict[str, Any], list[tuple[Rec, Rec]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(results) > 8  # then short labels ("45/0"), and the scatter by won / lost pairs
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(13.0, 7 + 0.3 * len(results)), 5.5))
    labels = [short(label) if many else label for label, _, _ in results]
    colors = dict(
        zip(PARTS, ("tab:red", "tab:orange", "tab:olive", "tab:gray", "tab:blue", "lightgray"), strict=True)
    )
    pos = [0.0] * len(results)
    neg = [0.0] * len(results)
    for part in PARTS:
        vals = [res["parts"][part] for _, res, _ in results]
        bottoms = [pos[i] if v >= 0 else neg[i] for i, v in enumerate(vals)]
        ax1.bar(labels, vals, bottom=bottoms, color=colors[part], label=part)
        for i, v in enumerate(vals):
            if v >= 0:
                pos[i] += v
            else:
                neg[i] += v
    ax1.plot(
        labels,
        [res["diff"] for _, res, _ in results],
        "k_",
        markersize=12 if many else 22,
        mew=2,
        label="mean TTFT difference",
    )
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_ylabel("kvgate - sglang-router, ms of the mean TTFT")
    ax1.set_title(
        "per pass pair (seed/pass): the difference split" if many else "per pass pair: the difference split"
    )
    ax1.tick_params(axis="x", rotation=90 if many else 30, labelsize=7 if many else 10)
    ax1.legend(fontsize=8)
    groups: dict[str, list[tuple[float, float]]] = {}
    for label, res, pairs in results:
        key = ("pairs kvgate lost" if res["diff"] > 0 else "pairs kvgate won") if many else label
        groups.setdefault(key, []).extend(
            (a["v_ttft_ms"] - b["v_ttft_ms"], (ttft(a) - a["v_ttft_ms"]) - (ttft(b) - b["v_ttft_ms"]))
            for a, b in pairs
            if recorded(a) and recorded(b)
        )
    for (key, pts), marker in zip(groups.items(), "osD^v<>p*hx+" * 4, strict=False):
        ax2.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            s=10 if many else 14,
            marker=marker,
            alpha=0.5,
            label=key,
        )
    every = [p for pts in groups.values() for p in pts]
    if many and every:  # the bulk, not the few stalls: 1st-99th percentile of each axis
        for axis, k in ((ax2.set_xlim, 0), (ax2.set_ylim, 1)):
            qs = statistics.quantiles([p[k] for p in every], n=100)
            axis(qs[0] - 5, qs[-1] + 5)
    ax2.axhline(0, color="k", lw=0.5)
    ax2.axvline(0, color="k", lw=0.5)
    ax2.set_xlabel("inside vLLM: kvgate's vLLM TTFT - sglang-router's (ms)")
    ax2.set_ylabel("outside vLLM: kvgate's - sglang-router's (ms)")
    ax2.set_title("per request pair (same prompt, same position)" + (", 1st-99th percentile" if many else ""))
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="vs_sglang.py --json files")
    ap.add_argument("--table", help="write the per-request table here (markdown)")
    ap.add_argument("--plot", help="write the figure here (png)")
    args = ap.parse_args()
    results: list[tuple[str, dict[str, Any], list[tuple[Rec, Rec]]]] = []
    table: list[str] = []
    head = (
        "| pass pair | load k; s | ratio | diff (ms) | "
        + " | ".join(PARTS)
        + " | computed k / s | prefill ms / 1k tok | max queue | same pick | outside k / s"
        + " | kvgate in / gateway / vLLM front / relay | router run / wait k; s | direct: TTFT / outside"
        + " | first / same / switched (ms) |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for f in args.runs:
        doc = json.loads(Path(f).read_text())
        seed = doc["args"]["seed"]
        for i, ka, sg, pairs in pass_pairs(doc):
            label = f"seed {seed}, pass {i}"
            res = split(pairs)
            results.append((label, res, pairs))
            p, ks = res["parts"], res["kvgate_steps"]
            (kr, kw), (sr, sw) = res["router_run_wait"]
            print(
                "| "
                + " | ".join(
                    [
                        label,
                        f"{ka['load_start']:.1f}-{ka['load_end']:.1f}; "
                        f"{sg['load_start']:.1f}-{sg['load_end']:.1f}",
                        f"{res['ratio']:.2f}x",
                        f"{res['diff']:+.1f}",
                        *(f"{p[k]:+.1f}" for k in PARTS),
                        f"{res['computed'][0]:.0f} / {res['computed'][1]:.0f}",
                        f"{res['slope_ms_per_1k']:.1f}",
                        f"{res['queue_max']:.2f}",
                        f"{res['same_pick']}/{res['n']}",
                        f"{res['outside'][0]:.1f} / {res['outside'][1]:.1f}",
                        " / ".join(
                            f"{ks.get(k, float('nan')):.1f}" for k in ("in", "gateway", "vllm_front", "relay")
                        ),
                        f"{kr:.1f} / {kw:.1f}; {sr:.1f} / {sw:.1f}",
                        direct_cell(doc, i),
                        " / ".join(f"{v:+.1f}" for v in res["by_move"].values()),
                    ]
                )
                + " |"
            )
            table += request_rows(f"{Path(f).name}, {label}", pairs)
    if not results:
        return 1
    pooled = {k: statistics.fmean(res["parts"][k] for _, res, _ in results) for k in PARTS}
    print(
        "\nmean over pass pairs (ms): diff "
        f"{statistics.fmean(res['diff'] for _, res, _ in results):+.1f} = "
        + ", ".join(f"{k} {v:+.1f}" for k, v in pooled.items())
    )
    print(front_waits([a for _, _, pairs in results for a, _ in pairs]))
    if args.table:
        Path(args.table).write_text(
            "Per request pair (k = kvgate, s = sglang-router; ms unless tokens), by "
            "`scripts/realvllm/attribute.py`; '-' where vLLM's histogram count did not move by one.\n"
            + "\n".join(table)
            + "\n"
        )
    if args.plot:
        plot(args.plot, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
