"""How much of one `kvgate bench multiturn` run's p90 TTFT is bursts that found their prefix cold: for each
burst (12 requests of one tenant within 50 ms), was the tenant's prefix still cached on any replica when
its first request arrived (engine truth, not the picker's index)? Prints the measured p90, the TTFT of
cold- and warm-burst requests, which classes make up the slowest 10%, and the floor a cold burst sets:
the prefill of one whole burst prompt, alone on an idle replica (every request of a cold burst waits for
some replica to compute the prefix, wherever it is sent).

    PYTHONPATH=src python scripts/cold_bursts.py FAMILY QPS [SEED] [POLICY]
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from script_usage import usage_or_exit
from sim_hooks import Bursts
from sim_setup import mixed_run_args

from kvgate.bench.mixed import BURST_SIZE
from kvgate.bench.multiturn import mixed_sim
from kvgate.bench.workloads import RequestSpec


def main() -> None:
    usage_or_exit(__doc__, 2)
    fam, policy, qps, seed = mixed_run_args()
    sim = mixed_sim(fam, policy, qps, seed)
    engines = [r.engine for r in sim.replicas]
    bursts = Bursts(sim, fam)
    kind: dict[str, str] = {}
    lives: dict[str, Any] = {}
    arrive = sim._arrive

    def watch(spec: RequestSpec) -> None:
        rid = f"r{sim._n}"
        b = bursts.see(spec, sim.clock.now)
        if b is not None:
            kind[rid] = "cold burst" if b[1] else "warm burst"
        arrive(spec)
        live = sim._live.get(rid)
        if live is not None and live.measured:
            lives[rid] = live
            kind.setdefault(rid, sim._cls.get(rid, "?"))

    sim._arrive = watch  # type: ignore[method-assign]
    row = sim.run().row
    ttft = {rid: live.first - live.start for rid, live in lives.items() if live.first is not None}
    ranked = sorted(ttft.items(), key=lambda kv: kv[1])
    n = len(ranked)
    by: dict[str, list[float]] = defaultdict(list)
    for rid, v in ranked:
        by[kind[rid]].append(v)
    tail = Counter(kind[rid] for rid, _ in ranked[int(0.9 * n):])  # fmt: skip
    p = fam.tenant_prefix + fam.burst_question
    floor = engines[0]._step_s(p, p, p * (p + 1) // 2, 0, 0, 0)
    print(f"{policy} {fam.name}/{seed} @ {qps:g} req/s: p90 TTFT {row['ttft_p90']:.3f} s over {n} requests")
    for k in ("cold burst", "warm burst"):
        v = by.get(k, [])
        if v:
            print(f"  {k}: {len(v)} requests ({len(v) / n:.0%}), TTFT min {min(v):.3f} "
                  f"p50 {statistics.median(v):.3f} s")  # fmt: skip
    print(f"  slowest 10%: {dict(tail)}")
    print(f"  one {p}-token burst prompt prefilled alone: {floor:.3f} s ({BURST_SIZE} per burst)")


if __name__ == "__main__":
    main()
