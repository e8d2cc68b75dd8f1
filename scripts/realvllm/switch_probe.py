"""What a switch between two real vLLM CPU servers costs with no router, and whether it is the switch or
the idle time (issue #16, session 26).

``vs_sglang.py`` sends one request every ~1.3 s; a request that goes to the other server than the request
before ("switch") finds its server idle for two gaps or more, after the other server's work, and costs
more (docs/benchmarks/realvllm.md §4.15-4.16). This client alone (no router, no gateway) starts two
vLLM servers as ``vs_sglang.py`` does, caches one tenant's system text on each, and then sends prefix
hits straight to a server under three conditions, shuffled (``--seed``):

- ``same``: to the server that served the request before, ``--gap`` after it;
- ``idle``: to the server that served the request before, ``2 x --gap`` after it (as idle as a switch's
  server, with nothing run in between);
- ``switch``: to the other server, ``--gap`` after the request before (its own last request at least
  ``2 x --gap`` ago, the other server's work in between).

Per request: the client's TTFT, vLLM's own TTFT, prefill and queue time (histogram deltas, as
``vs_sglang.py``), the prefix-hit tokens, and each server's process group's CPU and wait for a core in
the request's window (``/proc`` schedstat). If ``idle`` costs what ``switch`` costs, it is the idle
time; if it costs what ``same`` costs, it is the other server's work in between.

    flock /work/team/live.lock env PYTHONPATH=src python scripts/realvllm/switch_probe.py --json OUT
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_sglang import counters, group_pids, placed, sched_ms, timed, workload

from kvgate.realvllm.bench import reset_caches
from kvgate.realvllm.harness import ServerSpec, fleet, free_ports

CONDITIONS = ("same", "idle", "switch")


def probe(urls: list[str], servers: list[Any], rounds: int, gap: float, seed: int) -> list[dict[str, Any]]:
    prompts = workload(2, rounds * len(CONDITIONS) + 1, 400, seed)
    systems = sorted({p.split("\nUser ", 1)[0] for p in prompts})
    per = [[p for p in prompts if p.startswith(t + "\nUser ")] for t in systems]  # tenant 0's, tenant 1's
    nxt = [0, 0]
    reset_caches(servers)
    for i in (0, 1):  # each server caches its tenant's system text (a miss, unmeasured)
        timed(urls[i], per[i][0])
        nxt[i] = 1
        time.sleep(gap)
    order = [c for c in CONDITIONS for _ in range(rounds)]
    random.Random(seed).shuffle(order)
    pids = [s.proc.pid for s in servers if s.proc is not None]
    watch = {f"server{i}": group_pids(p) for i, p in enumerate(pids)}
    watch["client"] = [os.getpid()]
    last = 1
    last_send = [time.monotonic() - gap, time.monotonic()]
    records = []
    seen = counters(servers)
    for cond in order:
        target = 1 - last if cond == "switch" else last
        time.sleep(2 * gap if cond == "idle" else gap)
        p = per[target][nxt[target]]
        nxt[target] += 1
        s0 = {k: sched_ms(v) for k, v in watch.items()}
        rec: dict[str, Any] = dict(timed(urls[target], p))
        for k, v in watch.items():
            (r0, w0), (r1, w1) = s0[k], sched_ms(v)
            rec[f"{k}_run_ms"], rec[f"{k}_wait_ms"] = max(0.0, r1 - r0), max(0.0, w1 - w0)
        now = counters(servers)
        rec.update(placed(seen, now))
        seen = now
        rec.update(cond=cond, target=target, idle_s=rec["send"] - last_send[target],
                   other_between=last_send[1 - target] > last_send[target])  # fmt: skip
        last_send[target] = rec["send"]
        last = target
        records.append(rec)
    return records


def summary(records: list[dict[str, Any]]) -> None:
    keys = ("ttft", "v_ttft_ms", "v_prefill_ms", "v_queue_ms", "outside", "served_run_ms", "served_wait_ms",
            "other_run_ms", "other_wait_ms", "client_wait_ms", "idle_s")  # fmt: skip
    print(f"{'condition':9s} {'n':>3s} {'hits':>4s} " + " ".join(f"{k[:13]:>13s}" for k in keys))
    for cond in CONDITIONS:
        rows = [r for r in records if r["cond"] == cond]
        vals: dict[str, list[float]] = {k: [] for k in keys}
        for r in rows:
            t = r["target"]
            v = {"ttft": 1000 * (r["c_first"] - r["send"]), "served_run_ms": r[f"server{t}_run_ms"],
                 "served_wait_ms": r[f"server{t}_wait_ms"], "other_run_ms": r[f"server{1 - t}_run_ms"],
                 "other_wait_ms": r[f"server{1 - t}_wait_ms"], "client_wait_ms": r["client_wait_ms"],
                 "idle_s": r["idle_s"]}  # fmt: skip
            for k in ("v_ttft_ms", "v_prefill_ms", "v_queue_ms"):
                if k in r:
                    v[k] = r[k]
            if "v_ttft_ms" in r:
                v["outside"] = v["ttft"] - r["v_ttft_ms"]
            for k, x in v.items():
                vals[k].append(x)
        hits = sum(1 for r in rows if r.get("hit_tokens", 0) >= 0.5 * max(1.0, r.get("prompt_tokens", 0)))
        for name, f in (("mean", statistics.fmean), ("median", statistics.median)):
            cells = " ".join(f"{f(vals[k]):13.2f}" if vals[k] else f"{'-':>13s}" for k in keys)
            print(f"{cond:9s} {len(rows):3d} {hits:4d} {cells}  ({name})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=16, help="requests per condition")
    ap.add_argument("--gap", type=float, default=1.3, help="seconds between requests (vs_sglang: ~1.3)")
    ap.add_argument("--seed", type=int, default=1, help="the prompts' and the conditions' order")
    ap.add_argument("--json", help="write every request here")
    args = ap.parse_args()
    ports = free_ports(6)
    specs = [ServerSpec(ports[i], events_port=ports[2 + i], replay_port=ports[4 + i], num_gpu_blocks=64,
                        max_model_len=4096) for i in range(2)]  # fmt: skip
    print("load before", os.getloadavg(), flush=True)
    with tempfile.TemporaryDirectory() as d, fleet(specs, Path(d)) as servers:
        records = probe([s.url for s in servers], servers, args.rounds, args.gap, args.seed)
    print("load after", os.getloadavg(), flush=True)
    summary(records)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "records": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
