"""Where a router's per-request time goes in front of ONE real vLLM server (issue #16).

``vs_sglang.py`` compares routers over two servers, so each router's requests meet their own placements
and cache states. Here there is one vLLM CPU server (tiny Llama, block 128, 64 blocks, KV events on), and
every path routes to it: ``direct`` (no router), ``kvgate`` (``kvgate serve --endpoints <it>``, the
default policy with ``--kv-events auto``) and ``sglang`` (sglang-router ``cache_aware`` with it as its
only worker); ``kvgate@base`` runs ``--base-src``'s tree. All routers are started once and stay up for
the whole run (their start-up costs and background work are shared by every path's requests alike).

For each prompt of ``vs_sglang.py``'s workload (``--seed``, 8 tenants, ``--prefix-words``), each path in
turn (the order rotates from prompt to prompt) gets the same two requests on the same cache state: the
server's prefix cache is reset, then a MISS (the prompt, cold) and ``--gap`` seconds later a HIT (the
same tenant prefix with another user line). So the routing (one server) and the cache state are
identical and client TTFT differences are the paths' own cost.

Per request it records on one monotonic clock the client's send / response head / first ``data:`` line,
kvgate's ``x-kvgate-timing`` marks (recv, parsed, picked, sent, head, first) and vLLM's own TTFT for it
(the delta of ``vllm:time_to_first_token_seconds_sum``: requests are sequential), and prints per path and
kind: client TTFT, vLLM-side TTFT, their difference (the path's overhead: the API server's HTTP handling
is in it for every path alike, so direct's difference is the reference, a noisy one on a loaded machine:
the same prompt's vLLM-side TTFT can differ by tens of ms between paths), kvgate's steps, and kvgate over
sglang-router paired per prompt (geomean) and as the ratio of the means (``vs_sglang.py``'s statistic).

    PYTHONPATH=src python scripts/realvllm/proxy_split.py [--seed 17] [--prompts 16] [--json F]
    PYTHONPATH=src python scripts/realvllm/proxy_split.py --report F1.json F2.json:kvgate@base  (pooled)

``--report`` also prints, per kind, each run's ratio of the means (kvgate / sglang) and their geomean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_sglang import commit, cpu_s, kvgate_tree, server_ttft, timed, wait_http, workload

from kvgate import lifeline
from kvgate.bench import peers
from kvgate.realvllm.bench import reset_caches
from kvgate.realvllm.harness import MODEL_NAME, ServerSpec, fleet, free_ports

TTFT_PATH = "/metrics/?" + urllib.parse.urlencode(
    [("name[]", "vllm:time_to_first_token_seconds_sum"), ("name[]", "vllm:time_to_first_token_seconds_count")]
)
PATHS = ("direct", "kvgate", "kvgate@base", "sglang")
KVGATE_STEPS = (
    ("client -> gateway has the request", "send", "recv"),
    ("parse, headers", "recv", "parsed"),
    ("pick (tokenize, score, admit)", "parsed", "picked"),
    ("write upstream", "picked", "sent"),
    ("vLLM: request -> response head", "sent", "head"),
    ("vLLM: response head -> first chunk", "head", "first"),
    ("relay -> client first chunk", "first", "c_first"),
)


def hit_prompt(prompt: str) -> str:
    """The same tenant prefix with another user line: a prefix hit on every full block of the system text."""
    system, _, user = prompt.partition("\nUser ")
    return system + "\nUser " + "again: " + user


def ttft_sum(server: Any) -> tuple[float, float]:
    """vLLM's ``vllm:time_to_first_token_seconds`` (sum, count), from a filtered GET (prometheus_client)."""
    with urllib.request.urlopen(server.url + TTFT_PATH, timeout=10) as r:
        return server_ttft(r.read().decode())


def one(url: str, prompt: str, server: Any, gap: float) -> dict[str, float]:
    """``gap`` seconds after reading vLLM's TTFT counters, one request; vLLM's TTFT for it from the delta."""
    before = ttft_sum(server)
    time.sleep(gap)
    rec = timed(url, prompt)
    after = ttft_sum(server)
    rec["vllm_ttft"] = (after[0] - before[0]) if after[1] == before[1] + 1 else float("nan")
    return rec


def geomean(xs: list[float]) -> float:
    return statistics.geometric_mean(xs)


def mean_ratio(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    """Mean client TTFT of ``a`` over ``b``'s (``vs_sglang.py``'s hit / miss statistic, per pass)."""
    return statistics.fmean(r["c_first"] - r["send"] for r in a) / statistics.fmean(
        r["c_first"] - r["send"] for r in b
    )


def run_mean_ratios(runs: list[dict[str, Any]], a: str, b: str, kind: str) -> list[float]:
    """Per run, the ratio of ``a``'s mean client TTFT to ``b``'s (runs without both are skipped)."""
    return [mean_ratio(r[a][kind], r[b][kind]) for r in runs if a in r and b in r]


def pool(specs: list[str]) -> tuple[dict[str, dict[str, list[dict[str, float]]]], list[dict[str, Any]]]:
    """Read ``JSON[:PATH]`` runs (``:PATH`` read as kvgate, the file's own kvgate dropped) and pool the paths
    every run has, requests concatenated in run order (so the per-prompt pairing holds). ValueError if a
    PATH is not in its file (it would drop kvgate from every run without a word)."""
    runs = []
    for spec in specs:
        name, _, as_kvgate = spec.partition(":")
        recs = json.loads(Path(name).read_text())["records"]
        if as_kvgate:
            if as_kvgate not in recs:
                raise ValueError(f"{name} has no path {as_kvgate!r} (it has: {', '.join(recs)})")
            recs = {("kvgate" if p == as_kvgate else p): r for p, r in recs.items() if p != "kvgate"}
        runs.append(recs)
    pooled = {
        p: {k: [x for r in runs for x in r[p][k]] for k in ("miss", "hit")}
        for p in runs[0]
        if all(p in r for r in runs)
    }
    return pooled, runs


def report(recs: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("miss", "hit"):
        print({"miss": "misses (cold prompt):", "hit": "hits (same tenant prefix again):"}[kind])
        for path, by in recs.items():
            rs = [r for r in by[kind] if r["vllm_ttft"] == r["vllm_ttft"]]  # (nan: not counted)
            client = [1000 * (r["c_first"] - r["send"]) for r in rs]
            vllm = [1000 * r["vllm_ttft"] for r in rs]
            over = [c - v for c, v in zip(client, vllm, strict=True)]
            row = {"n": len(rs), "client_mean": statistics.fmean(client),
                   "client_median": statistics.median(client), "vllm_mean": statistics.fmean(vllm),
                   "over_mean": statistics.fmean(over),
                   "over_median": statistics.median(over)}  # fmt: skip
            print(f"  {path:12s} n={row['n']:3d}  client TTFT mean {row['client_mean']:6.1f} median "
                  f"{row['client_median']:6.1f} ms  vLLM-side {row['vllm_mean']:6.1f}  client - vLLM-side: "
                  f"mean {row['over_mean']:5.1f} median {row['over_median']:5.1f} ms")  # fmt: skip
            if rs and "first" in rs[0]:
                for label, a, b in KVGATE_STEPS:
                    ms = [1000 * (r[b] - r[a]) for r in rs]
                    row[label] = statistics.fmean(ms)
                    print(f"      {label:36s} mean {statistics.fmean(ms):6.2f}  median "
                          f"{statistics.median(ms):6.2f} ms")  # fmt: skip
            out.setdefault(kind, {})[path] = row
        # Paired: the same prompt on the same cache state through each path.
        names = list(recs)
        pairs = [(a, "direct") for a in names if a != "direct" and "direct" in names]
        pairs += [
            (a, b) for a, b in (("kvgate", "sglang"), ("kvgate", "kvgate@base")) if {a, b} <= set(names)
        ]
        for a, b in pairs:
            ratios = [
                (ra["c_first"] - ra["send"]) / (rb["c_first"] - rb["send"])
                for ra, rb in zip(recs[a][kind], recs[b][kind], strict=True)
            ]
            gm = geomean(ratios)
            under = sum(x <= 1.0 for x in ratios)
            mr = mean_ratio(recs[a][kind], recs[b][kind])
            out[kind][f"{a}/{b}"] = {"geomean": gm, "ratios": ratios, "mean_ratio": mr}
            print(f"  client TTFT {a} / {b}, paired per prompt: geomean {gm:.3f}x, median "
                  f"{statistics.median(ratios):.3f}x, {under} of {len(ratios)} <= 1.00x; "
                  f"ratio of the means {mr:.3f}x")  # fmt: skip
        base = out[kind].get("direct")
        if base:
            for path in names:
                row = out[kind][path]
                if path != "direct":
                    print(f"  {path}: over direct, client - vLLM-side mean "
                          f"{row['over_mean'] - base['over_mean']:+.2f} ms, median "
                          f"{row['over_median'] - base['over_median']:+.2f} ms")  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=16, help="prompts (each: a miss and a hit per path)")
    ap.add_argument("--prefix-words", type=int, default=400)
    ap.add_argument(
        "--paths",
        default="direct,kvgate,sglang",
        help="comma-separated: direct, kvgate, kvgate@base (needs --base-src), sglang (sglang-router)",
    )
    ap.add_argument("--gap", type=float, default=1.2, help="seconds before each request (vLLM's 1 s spin)")
    ap.add_argument("--base-src", help="another kvgate source tree: the path kvgate@base runs it")
    ap.add_argument("--json", help="write every request here")
    ap.add_argument(
        "--report",
        nargs="+",
        metavar="JSON[:PATH]",
        help="no run: pool these runs' requests and print the tables; ':PATH' reads that path as kvgate "
        "(e.g. a run's kvgate@base); only paths in every file are pooled",
    )
    args = ap.parse_args()
    if args.report:
        try:
            pooled, runs = pool(args.report)
        except (OSError, KeyError, ValueError) as e:
            ap.error(f"--report: {e}")
        left = sorted({p for r in runs for p in r} - set(pooled))
        if left:
            print(f"not in every file, not pooled: {', '.join(left)}")
        report(pooled)
        if len(runs) > 1 and {"kvgate", "sglang"} <= set(pooled):
            for kind in ("miss", "hit"):
                ratios = run_mean_ratios(runs, "kvgate", "sglang", kind)
                print(f"{kind}: client TTFT kvgate / sglang, ratio of the means per run "
                      f"{' '.join(f'{x:.3f}x' for x in ratios)}, geomean {geomean(ratios):.3f}x")  # fmt: skip
        return 0
    paths = [p for p in args.paths.split(",") if p]
    if unknown := [p for p in paths if p not in PATHS]:
        ap.error(f"--paths: unknown {', '.join(unknown)} (choose from {', '.join(PATHS)})")
    if "kvgate@base" in paths and not args.base_src:
        ap.error("--paths kvgate@base needs --base-src (the kvgate source tree it runs)")
    code = {"commit": commit(kvgate_tree()), "script_commit": commit()}
    prompts = workload(8, max(1, (args.prompts + 7) // 8), args.prefix_words, args.seed)[: args.prompts]
    sg = peers.PEERS["sglang-router"]
    if "sglang" in paths:
        peers.ensure_installed(sg)
    ports = free_ports(3)
    spec = ServerSpec(
        ports[0], events_port=ports[1], replay_port=ports[2], num_gpu_blocks=64, max_model_len=4096
    )
    log_dir = Path(tempfile.mkdtemp(prefix="kvgate-proxy-split-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    load = [os.getloadavg()]
    with fleet([spec], log_dir) as servers:
        server = servers[0]
        try:
            for p in paths:
                if p == "direct":
                    urls[p] = server.url
                    continue
                port = free_ports(1)[0]
                if p.startswith("kvgate"):
                    env = {**os.environ}
                    if p == "kvgate@base":
                        env["PYTHONPATH"] = str(Path(args.base_src).resolve())
                    cmd = [sys.executable, "-m", "kvgate.cli", "serve", "--endpoints", server.url, "--model",
                           MODEL_NAME, "--port", str(port), "--kv-events", "auto"]  # fmt: skip
                    logf = (log_dir / f"{p}.log").open("wb")
                    procs[p] = subprocess.Popen(
                        lifeline.die_with_parent_argv(cmd),
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                    wait_http(f"http://127.0.0.1:{port}/readyz", procs[p])
                else:
                    procs[p] = peers.launch(sg, [server.url], policy="cache_aware", port=port,
                                            log_path=log_dir / "sglang.log")  # fmt: skip
                    wait_http(f"http://127.0.0.1:{port}/health", procs[p])
                urls[p] = f"http://127.0.0.1:{port}"
            # Warm every path (first use of code paths, connections), unmeasured.
            for p in paths:
                for q in workload(8, 1, args.prefix_words, args.seed + 1000)[:4]:
                    timed(urls[p], q)
                    time.sleep(args.gap)
            recs: dict[str, dict[str, list[dict[str, float]]]] = {p: {"miss": [], "hit": []} for p in paths}
            cpu0 = {p: cpu_s(procs[p].pid, p == "sglang") for p in procs}
            for i, prompt in enumerate(prompts):
                order = paths[i % len(paths) :] + paths[: i % len(paths)]
                for p in order:
                    reset_caches([server])
                    recs[p]["miss"].append(one(urls[p], prompt, server, args.gap))
                    recs[p]["hit"].append(one(urls[p], hit_prompt(prompt), server, args.gap))
                load.append(os.getloadavg())
            cpu = {p: cpu_s(procs[p].pid, p == "sglang") - cpu0[p] for p in procs}
        finally:
            for pr in procs.values():
                pr.terminate()
                pr.wait(20)
    print(f"{len(prompts)} prompts x {len(paths)} paths x (miss, hit); seed {args.seed}; "
          f"load {min(lv[0] for lv in load):.2f}-{max(lv[0] for lv in load):.2f}")  # fmt: skip
    rows = report(recs)
    print("router CPU over the measured requests: " + ", ".join(f"{p} {c:.2f} s" for p, c in cpu.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **code, "load": load, "rows": rows,
                                               "cpu_s": cpu, "records": recs}, indent=1))  # fmt: skip
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
