"""What the slowest 10% of one fleet-simulator run are made of, request by request.

For every measured request: its class (session turn / burst / one-off for the mixed family, the
scenario's group otherwise), TTFT split into queue time (arrival to its first engine step) and the rest
(prefill, and decode steps shared with it), the prompt share its replica served from cache, and the
best share any replica's engine (not the picker's index) had cached at its arrival: a request that got
less than that was a routing miss, one whose best was ~0 found its prefix evicted everywhere.

    PYTHONPATH=src python scripts/tail_breakdown.py mixed FAMILY QPS SEED POLICY [POLICY...]
    PYTHONPATH=src python scripts/tail_breakdown.py scenario NAME QPS SEED DURATION POLICY [POLICY...]

Prints, per policy: p50/p90, the tail's composition by class, its mean queue and prefill-side time,
routing misses and cold-everywhere requests in the tail and overall, and the unloaded floor (TTFT of
the tail's requests' prompts prefilled alone with their best cache share).
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sim_setup import scenario_sim

from kvgate.bench.fleetsim import FleetSim
from kvgate.bench.workloads import RequestSpec
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.sim.kvcache import xxhash64_chain


@dataclass(slots=True)
class Rec:
    cls: str
    replica: int
    prompt: int
    best_cached: int  # tokens, best over engines at arrival
    here_cached: int = 0  # tokens the chosen engine had at arrival
    ttft: float = 0.0
    queue: float = 0.0
    served_cached: int = 0  # what the engine actually served from cache at its first schedule
    index_cached: int = -1  # what the approximate index believed the chosen replica held (-1: none)
    at: float = 0.0  # arrival (virtual s)
    group: str = ""
    # For a request whose prefix another request was computing at its arrival (a cold burst's followers):
    # the earliest that prefix is computed anywhere, from this request's arrival (s); 0 = not such a request.
    wait_prefix: float = 0.0


def instrument(sim: FleetSim, classify: Any) -> dict[str, Rec]:
    recs: dict[str, Rec] = {}
    engines = [r.engine for r in sim.replicas]
    bs = engines[0].config.block_size
    arrive = sim._arrive
    believed: dict[str, dict[str, int]] = {}  # request id -> address -> tokens the index matched
    scorer = sim.director.handle.find(PrefixCacheScorer)
    if scorer is not None:
        prepare = scorer.prepare

        def watch_index(cycle: Any, endpoints: Any) -> None:
            prepare(cycle, endpoints)
            m = cycle.data["prefix-cache"]
            per = m.chunk // 4  # tokens per block (ids are hashed as uint32, text at 4 chars a token)
            p = len(cycle.request.token_ids or ())
            believed[cycle.request.request_id] = {a: min(p, n * per) for a, n in m.matched.items()}

        scorer.prepare = watch_index  # type: ignore[method-assign]
    finished = sim.replicas[0].on_finished

    def cached_per_engine(ids: list[int]) -> list[int]:
        n = (len(ids) - 1) // bs
        hashes = xxhash64_chain(None, ids[: n * bs], bs, None)
        return [len(e.pool.lookup(hashes, n)) * bs for e in engines]

    def watch(spec: RequestSpec) -> None:
        rid = f"r{sim._n}"
        per = cached_per_engine(spec.prompt_ids) if sim.clock.now >= sim.cfg.warmup else []
        arrive(spec)
        live = sim._live.get(rid)
        if live is not None and live.measured and per:
            r = recs[rid] = Rec(classify(spec), live.index, len(spec.prompt_ids), max(per), per[live.index])
            r.at, r.group = sim.clock.now, spec.group
            if rid in believed:
                r.index_cached = believed.pop(rid).get(sim.endpoints[live.index].address, 0)
        believed.pop(rid, None)

    def done(s: Any, t: float) -> None:
        live = sim._live.get(s.request_id)
        r = recs.get(s.request_id)
        if r is not None and live is not None and live.first is not None:
            r.ttft = live.first - live.start
            r.queue = (s.first_scheduled_time or live.start) - live.start
            r.served_cached = s.num_cached_tokens
        finished(s, t)

    sim._arrive = watch  # type: ignore[method-assign]
    for rep in sim.replicas:  # they hold the callback they were built with
        rep.on_finished = done
    return recs


def mixed_class(spec: RequestSpec) -> str:
    return "session" if spec.session else ("burst" if spec.group.startswith("t") else "oneoff")


def report(policy: str, row: dict[str, Any], recs: dict[str, Rec], engine: Any) -> None:
    done = sorted((r for r in recs.values() if r.ttft > 0), key=lambda r: r.ttft)
    n = len(done)
    tail = done[int(0.9 * n) :]
    print(
        f"{policy}: p50 {row['ttft_p50']:.3f} s, p90 {row['ttft_p90']:.3f} s, "
        f"hit {row['prefix_hit_rate']:.3f}, {n} requests"
    )

    def misses(rs: list[Rec]) -> tuple[int, int]:
        routing = sum(1 for r in rs if r.here_cached + engine.config.block_size < r.best_cached)
        cold = sum(1 for r in rs if r.best_cached < 0.2 * r.prompt)
        return routing, cold

    for label, rs in (("all", done), ("tail", tail)):
        by = Counter(r.cls for r in rs)
        routing, cold = misses(rs)
        q = statistics.fmean(r.queue for r in rs)
        rest = statistics.fmean(r.ttft - r.queue for r in rs)
        hit = sum(r.served_cached for r in rs) / max(1, sum(r.prompt for r in rs))
        best = sum(r.best_cached for r in rs) / max(1, sum(r.prompt for r in rs))
        print(
            f"  {label:>4}: {dict(by)}; queue {q * 1000:.0f} ms + prefill/step {rest * 1000:.0f} ms; "
            f"hit {hit:.3f} (best available {best:.3f}); routing misses {routing}, cold everywhere {cold}"
        )
    idx = [r for r in done if r.index_cached >= 0]
    if idx:
        bs = engine.config.block_size
        over = [r for r in idx if r.index_cached > r.here_cached + bs]
        tail_over = [r for r in tail if r.index_cached > r.here_cached + bs]
        print(
            f"  index believed more than the chosen engine held: {len(over)} of {len(idx)} picks "
            f"({sum(r.index_cached - r.here_cached for r in over)} tokens), {len(tail_over)} in the tail; "
            f"by class {dict(Counter(r.cls for r in over))}"
        )
    per_cls: dict[str, list[float]] = defaultdict(list)
    for r in done:
        per_cls[r.cls].append(r.ttft)
    print(
        "  p90 per class: "
        + ", ".join(
            f"{c} {statistics.quantiles(v, n=10)[-1]:.3f} s ({len(v)})"
            for c, v in per_cls.items()
            if len(v) > 1
        )
    )

    # Floor: each request prefilled alone on an idle replica with the best cache share any engine had at
    # its arrival. No routing makes a request faster than that, so the p90 of these floors bounds the
    # p90 any policy can reach on these requests (order statistics are monotone). A cold burst's
    # followers find the prefix "cached" where the first request is still computing it: their floor is
    # also the time left until that computation could end (the first request's prompt alone, from its
    # arrival).
    def alone(unc: int, cached: int) -> float:
        unc = max(1, unc)
        return float(engine._step_s(unc, unc, unc * (unc + 1) // 2 + unc * cached, 0, 0, 0))

    first: dict[str, Rec] = {}
    for r in sorted(done, key=lambda r: r.at):
        if not r.group.startswith("t"):
            continue
        f = first.get(r.group)
        if f is None or r.at - f.at > 1.0:
            first[r.group] = f = r
        elif f.best_cached < 0.5 * f.prompt:  # the burst's first request found the prefix cold
            r.wait_prefix = max(0.0, alone(f.prompt, 0) - (r.at - f.at))

    def floor(r: Rec) -> float:
        return max(alone(r.prompt - r.best_cached, r.best_cached), r.wait_prefix)

    floors = sorted(floor(r) for r in done)
    tail_floors = [floor(r) for r in tail]
    print(
        f"  unloaded floor (alone, best cache share): p90 over all {floors[int(0.9 * n)] * 1000:.1f} ms "
        f"(a lower bound on any policy's p90), tail median {statistics.median(tail_floors) * 1000:.1f} ms"
    )


def main() -> None:
    kind = sys.argv[1]
    if kind == "mixed":
        from kvgate.bench.mixed import FAMILIES
        from kvgate.bench.multiturn import mixed_sim

        fam, qps, seed = FAMILIES[sys.argv[2]], float(sys.argv[3]), int(sys.argv[4])
        for policy in sys.argv[5:]:
            sim: FleetSim = mixed_sim(fam, policy, qps, seed)
            recs = instrument(sim, mixed_class)
            report(policy, sim.run().row, recs, sim.replicas[0].engine)
    else:
        from kvgate.bench.scenarios import SCENARIOS

        sc, qps, seed, duration = (
            SCENARIOS[sys.argv[2]],
            float(sys.argv[3]),
            int(sys.argv[4]),
            float(sys.argv[5]),
        )
        for policy in sys.argv[6:]:
            sim = scenario_sim(sc, policy, qps, seed, duration)
            recs = instrument(sim, lambda spec: "lora" if spec.lora else "request")
            report(policy, sim.run().row, recs, sim.replicas[0].engine)


if __name__ == "__main__":
    main()
