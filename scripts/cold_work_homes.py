"""Where a mixed family's tenant prefixes live and where the cold work lands relative to them (session 17,
mt17): per run, each tenant's bursts by replica; over the runs, how many replicas a cold burst was
spread over, how many replicas held some tenant prefix when cold work arrived, and the cold work's
tokens by the age of the chosen replica's freshest burst whose prefix it still caches, against every
replica's mix at the same moments (engine truth throughout, not a picker's index).

    PYTHONPATH=src:scripts python scripts/cold_work_homes.py FAMILY QPS FIRST_SEED LAST_SEED POLICY...

Cold work is what no replica can serve from cache: a session's first turn (``new``), a later turn whose
context no engine holds 30% of (``lost``), a decode-heavy one-off (``oneoff``); its tokens are its prompt
(plus a one-off's output, which it writes too). A replica "holds" a tenant when its engine caches the
tenant's whole prefix (less one block); the age of a holder is the time since the latest burst of a
tenant it holds was sent there. Per policy, for each age bin (and ``none``: holding no tenant prefix):
the share of the cold tokens sent to a replica in that bin, the share of all replicas in that bin at the
same moments (what a placement blind to the bins would give), their ratio, and at those picks the
chosen replica's requests in flight and KV in use against the fleet's mean. Only measured requests
(after the warm-up) count; the bursts are ``sim_hooks.Bursts``' (cold: the prefix cached nowhere).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

from script_usage import usage_or_exit
from sim_hooks import Bursts, cached_tokens

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim
from kvgate.bench.workloads import RequestSpec

BINS = ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, float("inf")))
NAMES = [f"{lo:.0f}-{hi:.0f} s" for lo, hi in BINS] + ["none"]
KINDS = ("new", "lost", "oneoff")


def bin_name(age: float | None) -> str:
    if age is None:
        return "none"
    for (lo, hi), name in zip(BINS, NAMES, strict=False):
        if lo <= age < hi:
            return name
    return NAMES[-2]


def run(fam: Any, policy: str, qps: float, seed: int, st: dict[Any, Any]) -> str:
    sim = mixed_sim(fam, policy, qps, seed)
    engines = [r.engine for r in sim.replicas]
    edge = fam.tenant_prefix - engines[0].config.block_size
    bursts = Bursts(sim, fam)
    prefixes: dict[str, list[int]] = {}
    last_burst: dict[tuple[str, int], float] = {}  # (tenant, replica) -> its latest burst's start there
    seen: set[str] = set()
    seq: dict[str, list[int]] = defaultdict(list)  # tenant -> replica of each burst's first request
    cold_reps: dict[tuple[str, float], set[int]] = {}  # a measured cold burst -> replicas it went to
    current: dict[str, tuple[str, float]] = {}
    arrive = sim._arrive

    def watch(spec: RequestSpec) -> None:
        now = sim.clock.now
        rid = f"r{sim._n}"
        measured = now >= sim.cfg.warmup
        kind = None
        if spec.session:
            if spec.session not in seen:
                seen.add(spec.session)
                kind = "new"
            elif max(cached_tokens(engines, spec.prompt_ids)) < 0.3 * len(spec.prompt_ids):
                kind = "lost"
        elif not spec.group.startswith("t"):
            kind = "oneoff"
        ages: list[float | None] = [None] * len(engines)
        if kind and measured:
            for g, ids in prefixes.items():
                for i, n in enumerate(cached_tokens(engines, ids)):
                    t = last_burst.get((g, i))
                    if n >= edge and t is not None:
                        prev = ages[i]
                        ages[i] = now - t if prev is None else min(prev, now - t)
        b = bursts.see(spec, now) if spec.group.startswith("t") and not spec.session else None
        arrive(spec)
        live = sim._live.get(rid)
        if live is None:
            return
        r = live.index
        if b is not None:
            g = spec.group
            if b[0]:
                prefixes.setdefault(g, spec.prompt_ids[: fam.tenant_prefix])
                seq[g].append(r)
                current[g] = (g, now)
                if b[1] and measured:
                    cold_reps[current[g]] = set()
            last_burst[g, r] = now
            if current.get(g) in cold_reps:
                cold_reps[current[g]].add(r)
        if kind and measured:
            tokens = len(spec.prompt_ids) + (spec.max_tokens if kind == "oneoff" else 0)
            name = bin_name(ages[r])
            st["chosen"][name] += tokens
            st["kind", kind][name] += tokens
            for a in ages:
                st["all"][bin_name(a)] += tokens / len(ages)
            holders = sum(a is not None for a in ages)
            st["holders"][kind] += holders
            st["picks"][kind] += 1
            st["on holder"][kind] += tokens * (ages[r] is not None)
            st["tokens"][kind] += tokens
            inflight = [ep.inflight.requests for ep in sim.endpoints]
            kv = [ep.metrics.kv_cache_usage for ep in sim.endpoints]
            load = st["load"][name]
            load[0] += 1
            load[1] += inflight[r]
            load[2] += sum(inflight) / len(inflight)
            load[3] += kv[r]
            load[4] += sum(kv) / len(kv)

    sim._arrive = watch  # type: ignore[method-assign]
    row = sim.run().row
    for reps in cold_reps.values():
        st["cold bursts"]["n"] += 1
        st["cold bursts"]["replicas"] += len(reps)
    homes = "; ".join(f"{g} {''.join(map(str, v))}" for g, v in sorted(seq.items()))
    return f"{fam.name}/{seed}: p90 {row['ttft_p90'] * 1000:.0f} ms; bursts by replica: {homes}"


def main() -> None:
    usage_or_exit(__doc__, 5)
    fam, qps = FAMILIES[sys.argv[1]], float(sys.argv[2])
    seeds = range(int(sys.argv[3]), int(sys.argv[4]) + 1)
    policies = sys.argv[5:]
    stats: dict[str, dict[Any, Any]] = {}
    for seed in seeds:
        for pol in policies:
            st = stats.setdefault(pol, defaultdict(lambda: defaultdict(float)))
            st["load"] = st.get("load") or defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
            print(f"{pol} {run(fam, pol, qps, seed, st)}", flush=True)
    for pol in policies:
        st = stats[pol]
        cb = st["cold bursts"]
        spread = cb["replicas"] / cb["n"] if cb["n"] else 0.0
        print(f"{pol}: measured cold bursts {cb['n']:.0f}, replicas per cold burst {spread:.2f}")
        for k in KINDS:
            n = st["picks"][k]
            if n:
                print(
                    f"  {k}: {n:.0f} picks, {st['tokens'][k]:.0f} tokens; replicas holding a tenant prefix "
                    f"{st['holders'][k] / n:.2f} of {fam.replicas}; tokens sent to one "
                    f"{st['on holder'][k] / st['tokens'][k]:.3f}"
                )
        tc, ta = sum(st["chosen"].values()), sum(st["all"].values())
        print("  cold tokens by the chosen replica's freshest held burst: chosen / all replicas (ratio)")
        for name in NAMES:
            c, a = st["chosen"][name] / tc, st["all"][name] / ta
            load = st["load"][name]
            extra = ""
            if load[0]:
                m = load[0]
                extra = (
                    f"; {m} picks, in flight there {load[1] / m:.1f} (fleet {load[2] / m:.1f}), "
                    f"KV in use {load[3] / m:.2f} (fleet {load[4] / m:.2f})"
                )
            print(f"    {name}: {c:.3f} / {a:.3f} ({c / a if a else 0.0:.2f}){extra}")


if __name__ == "__main__":
    main()
