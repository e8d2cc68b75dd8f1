"""Routing benchmark against real vLLM CPU servers: real prefix-cache hit rates per policy, same sequences.

    scripts/realvllm.sh bench [--servers 2] [--groups 8] [--per-group 4] [--seed 3]

Prints, from one run with every baseline measured in it:
1. kvgate vs round robin (and the reference profile) on a shared-prefix workload;
2. precise (KV events) vs approximate prefix scoring while one server also takes traffic around the gateway;
3. the simulator vs the real server, per-request prefix-cache hit tokens on one sequence.
Hit rate = delta(vllm:prefix_cache_hits_total) / delta(vllm:prefix_cache_queries_total) over the fleet,
gateway requests only, every server's prefix cache reset before each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from kvgate.realvllm import harness
from kvgate.realvllm.bench import (
    APPROXIMATE,
    Gateway,
    LoopThread,
    Workload,
    fidelity_sequence,
    precise_config,
    real_hits,
    run_workload,
    shared_prefix,
    sim_hits,
    wait_quiet,
    with_side_traffic,
)
from kvgate.scheduling.plugins.precise_prefix import shared_index

BLOCK = 128


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--num-gpu-blocks", type=int, default=64)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--per-group", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="seeds per comparison")
    ap.add_argument("--sections", default="1,2,3", help="which comparisons to run")
    ap.add_argument("--log-dir", default="/tmp/kvgate-realvllm-bench")
    ap.add_argument(
        "--state", default=None, help="reuse servers from `python -m kvgate.realvllm up --state F`"
    )
    a = ap.parse_args()

    ports = harness.free_ports(a.servers, spread=1000)
    specs = [
        harness.ServerSpec(
            port=p, events_port=p + 1000, replay_port=p + 2000, num_gpu_blocks=a.num_gpu_blocks
        )
        for p in ports
    ]
    if a.state:
        specs = [harness.ServerSpec(**s) for s in json.loads(Path(a.state).read_text())]
    lt = LoopThread()
    _, manager = shared_index("bench", "engine")
    for s in specs:
        lt.run(
            manager.add(
                f"127.0.0.1:{s.port}",
                f"tcp://127.0.0.1:{s.events_port}",
                bind=True,
                replay_endpoint=f"tcp://127.0.0.1:{s.replay_port}",
            )
        )
    t0 = time.monotonic()
    try:
        fleet = (
            contextlib.nullcontext(
                [harness.VLLMServer(s, harness.model_dir(), Path(a.log_dir)) for s in specs]
            )
            if a.state
            else harness.fleet(specs, Path(a.log_dir))
        )
        with fleet as servers:
            print(f"{a.servers} vLLM {harness.VLLM_VERSION} CPU servers up in {time.monotonic() - t0:.0f}s")
            addrs = [s.address for s in servers]

            def settle() -> None:
                # Until the KV-event streams fall quiet: every pick sees what the engines did before it.
                subs = manager.subscribers
                wait_quiet(lambda: lt.call(lambda: sum(s.stats.batches for s in subs.values())))

            def run(policy_name: str, policy: str | dict[str, Any], w: Workload) -> float:
                gw = Gateway(lt, addrs, policy)
                try:
                    return run_workload(servers, gw.url, w, policy_name, settle=settle).hit_rate
                finally:
                    gw.stop()

            sections = {int(x) for x in a.sections.split(",")}
            if 1 in sections:
                print(
                    f"\n1. shared prefix: {a.groups} groups x {a.per_group} requests, {4 * BLOCK}+40 tokens"
                )
                print(f"{'seed':>6} {'round-robin':>12} {'reference':>10} {'kvgate':>8}")
                for k in range(a.repeats):
                    w = shared_prefix(a.groups, a.per_group, 4 * BLOCK, 40, seed=a.seed + k)
                    row = [run(p, p, w) for p in ("round-robin", "reference", "kvgate")]
                    print(f"{a.seed + k:>6} {row[0]:>12.3f} {row[1]:>10.3f} {row[2]:>8.3f}")

            if 2 in sections:
                side = 14 * BLOCK + 10
                print(
                    f"\n2. same + a unique {side}-token prompt sent straight to server 0 before each request"
                )
                print(f"{'seed':>6} {'round-robin':>12} {'approximate':>12} {'precise':>8}")
                for k in range(a.repeats):
                    w = with_side_traffic(
                        shared_prefix(a.groups, a.per_group, 4 * BLOCK, 40, seed=a.seed + 10 + k),
                        server=0,
                        every=1,
                        tokens=14 * BLOCK + 10,
                    )
                    rr = run("round-robin", "round-robin", w)
                    approx = run("approximate", APPROXIMATE, w)
                    precise = run("precise", precise_config("bench"), w)
                    print(f"{a.seed + 10 + k:>6} {rr:>12.3f} {approx:>12.3f} {precise:>8.3f}")

            if 3 in sections:
                print("\n3. simulator vs real vLLM, one server, per-request prefix-cache hit tokens")
                seq = fidelity_sequence(block=BLOCK)
                real = real_hits(servers[0], seq)
                sim = sim_hits(seq, block_size=BLOCK, num_gpu_blocks=a.num_gpu_blocks - 1, max_model_len=2048)
                agree = sum(1 for x, y in zip(real, sim, strict=True) if x == y)
                print(
                    f"requests {len(seq)}, agree {agree}/{len(seq)}; hit tokens real {sum(real)}"
                    f" sim {sum(sim)}"
                )
                print(f"real: {real}\nsim:  {sim}")
            stats = {addr: sub.stats for addr, sub in manager.subscribers.items()}
            for addr, st in stats.items():
                print(
                    f"kv events {addr}: batches {st.batches} events {st.events} gaps {st.gaps} "
                    f"replayed {st.replayed} resyncs {st.resyncs} decode_errors {st.decode_errors}"
                )
    finally:
        lt.run(manager.close())
        lt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
