"""How often a mixed-family run's picks meet a replica that admits by memory: at each measured pick, the
candidates whose scraped queue is not empty while their scraped KV use is past the cost scorer's
``kvHigh`` (what session 21's ``memoryGate`` trial counted as saturated), and whether the pick went to
one of them. Engine truth alongside: the chosen replica's queue head lacked free blocks at that moment.

    PYTHONPATH=src:scripts python scripts/memory_gated_picks.py FAMILY QPS FIRST_SEED LAST_SEED POLICY

Prints per seed: measured picks, picks with at least one such candidate, picks sent to one, picks whose
chosen replica's queue head lacked blocks (engine truth), and the p90 TTFT.
"""

from __future__ import annotations

import sys
from typing import Any

from overload_timeline import head_shortfall
from script_usage import usage_or_exit

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer


def count(fam: Any, policy: str, qps: float, seed: int) -> tuple[list[int], float]:
    sim = mixed_sim(fam, policy, qps, seed)
    scorer = sim.director.handle.find(KVGateCostScorer)
    if scorer is None:
        sys.exit(f"{policy} has no kvgate-cost-scorer")
    engines = [r.engine for r in sim.replicas]
    index = {ep.address: i for i, ep in enumerate(sim.endpoints)}
    seen: dict[str, set[int]] = {}  # request id -> indexes of candidates admitting by memory
    costs = scorer.costs

    def watch(cycle: Any, endpoints: Any) -> list[float]:
        if cycle.now >= sim.cfg.warmup:
            stale = scorer.handle.staleness
            gated = set()
            for ep in endpoints:
                m = ep.metrics
                fresh = m.updated_at is not None and cycle.now - m.updated_at <= stale
                if fresh and m.waiting_queue_size and m.kv_cache_usage > scorer.kv_high:
                    gated.add(index[ep.address])
            seen[cycle.request.request_id] = gated
        return costs(cycle, endpoints)

    scorer.costs = watch  # type: ignore[method-assign]
    picks = met = sent = short = 0
    pick = sim.director.pick

    def counted(req: Any) -> Any:
        nonlocal picks, met, sent, short
        res = pick(req)
        gated = seen.pop(req.request_id, None)
        if gated is not None:
            i = index[res.primary.address]
            picks += 1
            met += bool(gated)
            sent += i in gated
            short += head_shortfall(engines[i]) > 0
        return res

    sim.director.pick = counted  # type: ignore[method-assign]
    row = sim.run().row
    return [picks, met, sent, short], row["ttft_p90"]


def main() -> None:
    usage_or_exit(__doc__, 5)
    fam, qps = FAMILIES[sys.argv[1]], float(sys.argv[2])
    first, last, policy = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    total = [0, 0, 0, 0]
    for seed in range(first, last + 1):
        got, p90 = count(fam, policy, qps, seed)
        total = [a + b for a, b in zip(total, got, strict=True)]
        picks, met, sent, short = got
        print(
            f"{fam.name}/{seed}: {picks} picks, {met} met a replica admitting by memory, {sent} sent to one, "
            f"{short} to a replica whose queue head lacked blocks; p90 {p90 * 1000:.0f} ms",
            flush=True,
        )
    print(f"all: {total[0]} picks, {total[1]} met, {total[2]} sent to one, {total[3]} head short")


if __name__ == "__main__":
    main()
