"""Upper bounds for two routing ideas on the multi-turn family, as oracles (engine truth, forced picks),
not policies: if an oracle does not pay, a cost-model version of it will not either.

- ``segregate``: every decode-heavy one-off (no session, short prompt, long output) goes to one replica,
  so the others' caches churn less and keep tenants' prefixes between bursts;
- ``pin``: every request of a tenant's bursts goes to the replica its first burst went to (as sglang's
  cache_aware keeps a prefix on one replica: its tree never forgets), the rest as kvgate picks;
- ``smallest``: a request cached nowhere that is not a burst's (a session's first turn, a one-off)
  goes to the replica with the fewest prompt tokens computed there so far (sglang cache_aware's
  "smallest tree" rule, its tree never evicting), the rest as kvgate picks;
- ``split2`` / ``split3``: a burst whose prefix no engine caches when its first request arrives has its
  followers dealt in turn over the first request's replica and the 1 / 2 least-loaded others.

Prints the p90, p99 and hit rate, and the measured bursts that found their prefix cold.

    PYTHONPATH=src python scripts/burst_oracles.py MODE FAMILY QPS SEED
    (MODE: base|segregate|pin|smallest|split2|split3)
"""

from __future__ import annotations

import sys
from typing import Any

from script_usage import usage_or_exit
from sim_hooks import force_pick
from tail_breakdown import instrument, mixed_class

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim
from kvgate.sim.kvcache import xxhash64_chain


def main() -> None:
    usage_or_exit(__doc__, 4)
    mode, fam, qps, seed = sys.argv[1], FAMILIES[sys.argv[2]], float(sys.argv[3]), int(sys.argv[4])
    sim = mixed_sim(fam, "kvgate", qps, seed)
    engines = [r.engine for r in sim.replicas]
    bs = engines[0].config.block_size
    ways = int(mode[-1]) if mode.startswith("split") else 1
    bursts: dict[tuple[int, ...], list[Any]] = {}  # prefix -> [first arrival, cold, replicas, followers]
    homes: dict[tuple[int, ...], Any] = {}  # pin: tenant prefix -> its replica
    tree = {id(e): 0 for e in sim.endpoints}  # smallest: prompt tokens computed per replica so far

    def forced(req: Any, res: Any) -> Any:
        ids = req.token_ids or []
        if mode == "segregate":
            if not req.session_key and len(ids) < 700 and (req.max_tokens or 0) >= 300:
                return sim.endpoints[-1]
            return None
        if mode == "smallest":
            n = len(ids) // bs
            hashes = xxhash64_chain(None, ids[: n * bs], bs, None)
            cached = {
                id(ep): len(e.pool.lookup(hashes, n)) * bs
                for ep, e in zip(sim.endpoints, engines, strict=True)
            }
            to = res.primary
            if max(cached.values()) < 0.2 * len(ids) and (req.session_key or len(ids) < fam.tenant_prefix):
                to = min(sim.endpoints, key=lambda ep: tree[id(ep)])
            tree[id(to)] += len(ids) - cached[id(to)]
            return to
        if mode == "pin":
            if req.session_key or len(ids) < fam.tenant_prefix:
                return None
            return homes.setdefault(tuple(ids[:32]), res.primary)
        if not ways or req.session_key or len(ids) < fam.tenant_prefix:
            return None
        key, now = tuple(ids[:32]), sim.clock.now
        b = bursts.get(key)
        if b is None or now - b[0] > 1.0:
            n = fam.tenant_prefix // bs
            hashes = xxhash64_chain(None, ids[: n * bs], bs, None)
            cold = max(len(e.pool.lookup(hashes, n)) for e in engines) < n // 2
            others = sorted(
                (e for e in sim.endpoints if e is not res.primary), key=lambda e: e.inflight.requests
            )
            bursts[key] = [now, cold, [res.primary, *others[: ways - 1]], 0]
            return None
        b[3] += 1
        return b[2][b[3] % ways] if b[1] and ways > 1 else None

    force_pick(sim, forced)
    recs = instrument(sim, mixed_class)
    row = sim.run().row
    first: dict[str, Any] = {}
    cold = total = 0
    for r in sorted((r for r in recs.values() if r.cls == "burst"), key=lambda r: r.at):
        f = first.get(r.group)
        if f is None or r.at - f.at > 1.0:
            first[r.group] = r
            total += 1
            cold += r.best_cached < 0.5 * r.prompt
    print(
        f"{mode} {fam.name}/{seed} @ {qps:g} req/s: p90 {row['ttft_p90']:.3f} s, "
        f"p99 {row['ttft_p99']:.3f} s, "
        f"hit {row['prefix_hit_rate']:.3f}, cold bursts {cold} of {total}, per replica {sim.per_replica}"
    )


if __name__ == "__main__":
    main()
