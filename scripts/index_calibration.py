"""How well the approximate prefix index knows what each engine caches, on one multi-turn family run.

At every measured pick, for every candidate endpoint, compares the prefix the index believes that
endpoint holds (leading blocks) with what its engine really caches (the simulator's block pool). Counts
over-beliefs (the index claims more) and under-beliefs (the engine holds more), and splits the
over-beliefs into those on a prefix the index was told about less than a second before (a burst's
followers picked while the first request is still computing the prefix: the engine cannot have it yet,
which is expected, not an index error) and the rest (the engine evicted what the index still lists).

    PYTHONPATH=src python scripts/index_calibration.py FAMILY[:FIELD=N,...] QPS SEED POLICY

(``a:tenant_prefix=4096`` runs family a with that field changed, as ``scripts/family_variant.py``.)
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from sim_setup import family

from kvgate.bench.multiturn import mixed_sim
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.sim.kvcache import xxhash64_chain

RECENT_S = 1.0


def main() -> None:
    fam = family(sys.argv[1])
    qps, seed, policy = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sim = mixed_sim(fam, policy, qps, seed)
    engines = {ep.address: r.engine for ep, r in zip(sim.endpoints, sim.replicas, strict=True)}
    bs = sim.replicas[0].engine.config.block_size
    scorer = sim.director.handle.find(PrefixCacheScorer)
    if scorer is None:
        raise SystemExit(f"{policy}: no approximate prefix-cache-scorer")
    told: dict[tuple[str, int], float] = {}  # (endpoint, block hash) -> when the index last recorded it
    counts: Counter[str] = Counter()
    stale_by_class: Counter[str] = Counter()
    prepare, picked = scorer.prepare, scorer.on_picked

    def watch(cycle: Any, endpoints: Any) -> None:
        prepare(cycle, endpoints)
        m = prefix_match(cycle)
        ids = cycle.request.token_ids or []
        now = sim.clock.now
        if now < sim.cfg.warmup or m is None or not m.hashes:
            return
        n = min(len(m.hashes), (len(ids) - 1) // bs)
        hashes = xxhash64_chain(None, ids[: n * bs], bs, None)
        cls = "session" if cycle.request.session_key else "other"
        for ep in endpoints:
            held = len(engines[ep.address].pool.lookup(hashes, n))
            believed = min(m.matched.get(ep.address, 0), n)
            counts["pairs"] += 1
            if believed > held + 1:
                t = told.get((ep.address, m.hashes[believed - 1]))
                recent = t is not None and now - t < RECENT_S
                counts["over, in progress" if recent else "over, evicted"] += 1
                if not recent:
                    stale_by_class[cls] += 1
            elif held > believed + 1:
                counts["under"] += 1

    def record(cycle: Any, endpoint: Any) -> None:
        picked(cycle, endpoint)
        m = prefix_match(cycle)
        for h in m.hashes if m is not None else ():
            told[(endpoint.address, h)] = sim.clock.now

    scorer.prepare = watch  # type: ignore[method-assign]
    scorer.on_picked = record  # type: ignore[method-assign]
    row = sim.run().row
    print(
        f"{policy} {fam.name}/{seed} @ {qps:g} req/s: p90 {row['ttft_p90']:.3f} s, hit "
        f"{row['prefix_hit_rate']:.3f}; (pick, endpoint) pairs {counts['pairs']}: index over-believes "
        f"{counts['over, in progress'] + counts['over, evicted']} ({counts['over, in progress']} on a prefix "
        f"recorded < {RECENT_S:g} s before, {counts['over, evicted']} evicted by the engine: "
        f"{dict(stale_by_class)}), under-believes {counts['under']}"
    )


if __name__ == "__main__":
    main()
