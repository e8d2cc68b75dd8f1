"""What the requests in the p90 band wait behind at their replica, under two policies (session 35).

    PYTHONPATH=src:scripts python scripts/band_ahead_s35.py FAM QPS FIRST LAST POL_A POL_B [--list]

The workload is fixed by the seed, so each measured request is followed under both policies. At its
arrival, at the replica its policy chose, the simulator's engine queue is read: every request there with
prefill still to do (running with prompt tokens not computed, or waiting: its prompt less what the engine
caches now), split by that request's class (``session`` / ``burst`` / ``oneoff``) and by whether it is
cold (the engine caches under 20% of its prompt: a new or lost session context, an evicted tenant
prefix, a one-off) or warm; ``in-step``: the prefill tokens of the engine step running at the arrival
(the simulator advances a request's computed tokens when its step is scheduled). A waiting follower of
a cold burst counts its whole prompt (it will hit once the first request's prefill has run). Band = at
or over the policy's own p90 (per seed). Per policy it prints the band's mean prefill tokens ahead by
kind, and how many band requests had a cold long prefill (>= 2,048 tokens) ahead; then, for the
requests in A's band and not in B's, the same at B's chosen replica.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from request_traces import build
from script_usage import usage_or_exit
from tail_breakdown import Rec, instrument

from kvgate.sim.kvcache import xxhash64_chain

LONG = 2048


@dataclass(slots=True)
class Ahead:
    """Prefill tokens ahead at the chosen replica on arrival, by (class, cold|warm)."""

    tokens: Counter[str] = field(default_factory=Counter)
    long_cold: int = 0  # cold prefills of >= LONG tokens ahead
    running: int = 0
    waiting: int = 0


def watch(sim: Any, klass: dict[str, str]) -> dict[str, Ahead]:
    engines = [r.engine for r in sim.replicas]
    bs = engines[0].config.block_size
    arrive = sim._arrive
    out: dict[str, Ahead] = {}
    steps: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(engines)  # (start, end, prefill tokens)

    def record(i: int, e: Any) -> None:
        step = e.step

        def wrapped(now: float) -> Any:
            res = step(now)
            steps[i] = (now, now + res.duration, res.num_prefill_tokens)
            return res

        e.step = wrapped

    for i, e in enumerate(engines):
        record(i, e)

    def cached(e: Any, ids: list[int]) -> int:
        n = (len(ids) - 1) // bs
        return len(e.pool.lookup(xxhash64_chain(None, ids[: n * bs], bs, None), n)) * bs

    def hook(spec: Any) -> None:
        rid = f"r{sim._n}"
        klass[rid] = "session" if spec.session else ("burst" if spec.group.startswith("t") else "oneoff")
        arrive(spec)
        live = sim._live.get(rid)
        if live is None or not live.measured:
            return
        e = engines[live.index]
        a = Ahead(running=e.num_running, waiting=e.num_waiting)
        start, end, pf = steps[live.index]
        if start <= sim.clock.now < end and pf:
            a.tokens["in-step"] = pf  # the step running now: its prefill tokens (any class)
        for s in e._running:
            left = s.plen - s.num_computed
            if left > 0:
                cold = (s.req.num_cached_tokens or 0) < 0.2 * s.plen
                a.tokens[f"{klass.get(s.req.request_id, '?')}-{'cold' if cold else 'warm'}"] += left
                a.long_cold += cold and left >= LONG
        for s in e._waiting:
            if s.req.request_id == rid:
                continue
            c = cached(e, s.prompt)
            left = s.plen - c
            cold = c < 0.2 * s.plen
            a.tokens[f"{klass.get(s.req.request_id, '?')}-{'cold' if cold else 'warm'}"] += left
            a.long_cold += cold and left >= LONG
        out[rid] = a

    sim._arrive = hook  # type: ignore[method-assign]
    return out


def run(make: Any, pol: str) -> tuple[dict[str, Any], dict[str, Rec], dict[str, Ahead]]:
    sim, cls = make(pol)
    recs = instrument(sim, cls)
    klass: dict[str, str] = {}
    ahead = watch(sim, klass)
    row = sim.run().row
    return row, {k: r for k, r in recs.items() if r.ttft > 0}, ahead


def fate(r: Rec, a: Ahead) -> str:
    return (
        f"here {r.here_cached} served {r.served_cached} q {r.queue * 1000:.0f} ttft {r.ttft * 1000:.0f} "
        f"ahead {dict(a.tokens)}"
    )


KINDS = ("in-step", "session-cold", "session-warm", "burst-cold", "burst-warm", "oneoff-cold", "oneoff-warm")


def summary(name: str, rs: list[tuple[Rec, Ahead]]) -> str:
    if not rs:
        return f"  {name}: none"
    parts = " ".join(f"{k} {statistics.fmean(a.tokens[k] for _, a in rs):5.0f}" for k in KINDS)
    lc = sum(a.long_cold > 0 for _, a in rs)
    ttft = statistics.fmean(r.ttft for r, _ in rs) * 1000
    q = statistics.fmean(r.queue for r, _ in rs) * 1000
    run_ = statistics.fmean(a.running for _, a in rs)
    return (
        f"  {name}: n {len(rs)}, ttft {ttft:.0f} ms, queue {q:.0f} ms, running {run_:.1f}; tokens ahead "
        f"{parts}; with a cold prefill >= {LONG} ahead: {lc}"
    )


def main() -> None:
    argv = [a for a in sys.argv[1:] if a != "--list"]
    usage_or_exit(__doc__, 6)
    fam, qps, first, last, pa, pb = argv[:6]
    band: dict[str, list[tuple[Rec, Ahead]]] = defaultdict(list)
    by_cls: dict[tuple[str, str], list[tuple[Rec, Ahead]]] = defaultdict(list)
    only_a: list[tuple[Rec, Ahead, Rec, Ahead]] = []
    for seed in range(int(first), int(last) + 1):
        _, make = build(["mixed", fam, qps, str(seed), pa, pb])
        ra, a, aa = run(make, pa)
        rb, b, ab = run(make, pb)
        ta, tb = ra["ttft_p90"], rb["ttft_p90"]
        for pol, recs, ah, t in ((pa, a, aa, ta), (pb, b, ab, tb)):
            for rid, r in recs.items():
                if r.ttft >= t and rid in ah:
                    band[pol].append((r, ah[rid]))
                    by_cls[pol, r.cls].append((r, ah[rid]))
        n = 0
        for rid, r in a.items():
            o = b.get(rid)
            if o is not None and r.ttft >= tb and o.ttft < tb and rid in aa and rid in ab:
                only_a.append((r, aa[rid], o, ab[rid]))
                n += 1
                if "--list" in sys.argv:
                    x, y = aa[rid], ab[rid]
                    print(
                        f"  {seed} {rid} {r.cls:7} at {r.at:6.1f} best {r.best_cached} | "
                        f"A rep {r.replica} {fate(r, x)} | B rep {o.replica} {fate(o, y)}"
                    )
        print(
            f"seed {seed}: p90 A {ta * 1000:.0f} B {tb * 1000:.0f}; slow (>= B's p90) under A only: {n}",
            flush=True,
        )
    for pol in (pa, pb):
        print(f"\n{pol}: the band (>= its own p90), at the chosen replica on arrival (mean per request)")
        print(summary("all", band[pol]))
        for c in ("session", "burst", "oneoff"):
            print(summary(c, by_cls[pol, c]))
    print(f"\nSlow under A ({pa}) and not under B ({pb}), at or over B's p90: {len(only_a)}")
    print(summary("under A", [(r, x) for r, x, _, _ in only_a]))
    print(summary("under B", [(o, y) for _, _, o, y in only_a]))
    same = sum(r.replica == o.replica for r, _, o, _ in only_a)
    print(f"  same replica under both: {same}; classes {dict(Counter(r.cls for r, _, _, _ in only_a))}")


if __name__ == "__main__":
    main()
