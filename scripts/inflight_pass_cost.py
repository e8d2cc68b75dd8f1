"""Cost of one worker's steady 5 ms pass of ``--workers``' shared in-flight table
(``gateway.shared_inflight``, ``workers._sync_pass``): 1,024 endpoints listed, 2 workers (both views in
this process; worker 0's pass timed, worker 1's between them untimed), three loads: ``idle`` (no count
changes anywhere), ``10%`` (each pass ~10% of the endpoints change on worker 0 and another ~10% on
worker 1: a request dispatched or finished, tokens sent) and ``all`` (every endpoint changes on both
workers at every pass: the worst case).

``python scripts/inflight_pass_cost.py`` prints this tree's figures; ``--compare OTHER_SRC`` runs this
script under each src tree alternately (``--rounds`` times each, fresh processes) and prints both trees'
medians per load and their ratio (before = OTHER_SRC, after = this tree's src)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

from kvgate import lifeline

N = 1024
POOL = "vllm-llama3-8b-instruct"
LOADS = {"idle": 0.0, "10%": 0.1, "all": 1.0}


def _measure(passes: int) -> dict[str, float]:
    from kvgate.datalayer.store import EndpointStore
    from kvgate.gateway.shared_inflight import SharedInFlight
    from kvgate.gateway.workers import _sync_pass

    lock = multiprocessing.get_context("spawn").Lock()
    out = {}
    for name, share in LOADS.items():
        owner = SharedInFlight.create(2, lock, N)
        views = [SharedInFlight.attach(owner.name, lock, 2, w, N) for w in range(2)]
        addrs = [f"10.{i // 250}.{i % 250}.2:8000" for i in range(N)]
        stores = [EndpointStore.from_addresses(addrs) for _ in range(2)]
        pools = [[SimpleNamespace(name=POOL, endpoints=s.all, store=s)] for s in stores]
        eps = [s.all() for s in stores]
        rng = random.Random(1)
        for w in range(2):
            _sync_pass(views[w], pools[w])
        took, cpu = [], []
        for n in range(passes):
            for w in range(2):  # this pass's changes on both workers (dispatches, finishes, tokens sent)
                for ep in eps[w] if share >= 1 else rng.sample(eps[w], int(N * share)):
                    inf = ep.inflight
                    inf.requests = (inf.requests + 1) % 3
                    inf.sent_tokens += 100
            _sync_pass(views[1], pools[1])
            t, c = time.perf_counter(), time.thread_time()
            _sync_pass(views[0], pools[0])
            if n >= 5:  # (after a warm-up)
                cpu.append((time.thread_time() - c) * 1e6)
                took.append((time.perf_counter() - t) * 1e6)
        out[name] = statistics.median(cpu)
        out[f"{name} wall"] = statistics.median(took)
        for v in (*views, owner):
            v.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", metavar="OTHER_SRC")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not a.compare:
        got = _measure(a.passes)
        if a.json:
            print(json.dumps(got))
        else:
            for name in LOADS:
                print(f"steady pass, {N:,} endpoints, changes {name}: median {got[name]:,.0f} us of CPU per "
                      f"pass ({got[name + ' wall']:,.0f} us of wall time)")  # fmt: skip
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    trees = {"before": os.path.abspath(a.compare), "after": os.path.abspath(here)}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for _ in range(a.rounds):  # alternated: both trees see the same load drift
        for tag, src in trees.items():
            env = {**os.environ, "PYTHONPATH": src}
            cmd = [sys.executable, __file__, "--json", "--passes", str(a.passes)]
            runs[tag].append(json.loads(subprocess.run(lifeline.die_with_parent_argv(cmd, waited=True),
                                                       env=env, check=True, capture_output=True,
                                                       text=True).stdout))  # fmt: skip
    print(f"load: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15-min loadavg at the end)")
    print(f"steady pass, {N:,} endpoints, 2 workers; per pass: the median over {a.rounds} alternated runs")
    print("of each run's median, CPU time (the thread's: what the pass costs, whatever else runs) and wall")
    print("| changes per pass | CPU before | CPU after | after / before | wall before | wall after | "
          "runs' CPU before; after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in LOADS:
        rb, rf = [r[name] for r in runs["before"]], [r[name] for r in runs["after"]]
        b, f = statistics.median(rb), statistics.median(rf)
        wb = statistics.median(r[f"{name} wall"] for r in runs["before"])
        wf = statistics.median(r[f"{name} wall"] for r in runs["after"])
        print(f"| {name} | {b:,.0f} us | {f:,.0f} us | {f / b:.2f}x | {wb:,.0f} us | {wf:,.0f} us | "
              f"{', '.join(f'{x:,.0f}' for x in rb)}; {', '.join(f'{x:,.0f}' for x in rf)} |")  # fmt: skip


if __name__ == "__main__":
    main()
