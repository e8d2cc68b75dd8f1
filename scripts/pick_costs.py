"""What kvgate's cost scorer saw and chose at each pick of a time window of one mixed-family run: per
candidate its cost, the scraped KV use and queue, the picker's own in-flight count and pending prefill
and decode tokens, and the engine's truth at that moment (blocks free, requests waiting), so a pick can
be judged against what the replica really had room for.

    PYTHONPATH=src:scripts python scripts/pick_costs.py FAMILY QPS SEED FROM TO POLICY [CLASSES]

CLASSES (default ``burst,session,oneoff``) keeps only picks of those classes; for bursts only a burst's
first request is printed (its followers follow it).
"""

from __future__ import annotations

import sys
from typing import Any

from script_usage import usage_or_exit
from tail_breakdown import instrument, mixed_class

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer


def main() -> None:
    usage_or_exit(__doc__, 6)
    fam, qps, seed = FAMILIES[sys.argv[1]], float(sys.argv[2]), int(sys.argv[3])
    t0, t1, policy = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    classes = set((sys.argv[7] if len(sys.argv) > 7 else "burst,session,oneoff").split(","))
    sim = mixed_sim(fam, policy, qps, seed)
    scorer = sim.director.handle.find(KVGateCostScorer)
    if scorer is None:
        sys.exit(f"{policy} has no kvgate-cost-scorer")
    engines = [r.engine for r in sim.replicas]
    specs: dict[str, Any] = {}
    logged: list[tuple[str, float, list[float], list[str]]] = []
    costs = scorer.costs
    last_burst: dict[str, float] = {}

    def watch_costs(cycle: Any, endpoints: Any) -> list[float]:
        out = costs(cycle, endpoints)
        now = cycle.now
        rid = cycle.request.request_id
        spec = specs.get(rid)
        if spec is None or not t0 <= now <= t1 or mixed_class(spec) not in classes:
            return out
        if mixed_class(spec) == "burst":
            first = now - last_burst.get(spec.group, -9.0) > 1.0
            last_burst[spec.group] = now
            if not first:
                return out
        cells = []
        for ep, e in zip(endpoints, engines, strict=True):
            m, inf = ep.metrics, ep.inflight
            cells.append(
                f"kv {m.kv_cache_usage:.3f} q {m.waiting_queue_size:2d} r {m.running_requests:2d} | "
                f"own {inf.requests:2d} pf {inf.pending_prefill_tokens:5d} "
                f"dec {inf.pending_decode_tokens:6d} | "
                f"free {e.pool.num_free:4d} wait {e.num_waiting:2d}"
            )
        logged.append((rid, now, list(out), cells))
        return out

    scorer.costs = watch_costs  # type: ignore[method-assign]
    recs = instrument(sim, mixed_class)
    arrive = sim._arrive

    def keep(spec: Any) -> None:
        specs[f"r{sim._n}"] = spec
        arrive(spec)

    sim._arrive = keep  # type: ignore[method-assign]
    row = sim.run().row
    print(f"{policy}: p90 {row['ttft_p90'] * 1000:.0f} ms")
    for rid, now, cs, cells in logged:
        r = recs.get(rid)
        spec = specs[rid]
        lo = min(cs)
        fate = f"-> {r.replica} ttft {r.ttft * 1000:.0f} ms" if r is not None else ""
        print(f"{now:7.2f} {rid} {mixed_class(spec)} {spec.group} prompt {len(spec.prompt_ids)} {fate}")
        for i, (c, cell) in enumerate(zip(cs, cells, strict=True)):
            mark = "*" if c == lo else " "
            print(f"   {mark}{i} cost {c:9.0f}  {cell}")


if __name__ == "__main__":
    main()
