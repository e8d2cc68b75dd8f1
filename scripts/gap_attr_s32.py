"""Attribute one mixed family's p90 TTFT gap between two policies, request class by request class.

    PYTHONPATH=src:scripts python scripts/gap_attr_s32.py FAM QPS FIRST LAST POL_A POL_B [--list] [--at=MS]

The workload is fixed by the seed, so every measured request is followed under both policies (engine
truth at arrival, as ``request_traces.py``). Per seed, with ``T`` = B's p90: A's p90 is over B's exactly
when A has more measured requests at or over ``T`` than B has; the difference, split by request class and
by why each slow request was slow, is the attribution of the gap. Classes:

- ``turn1``: a session's first turn (its context is new: cold by construction);
- ``turnK-warm`` / ``turnK-lost``: a later turn whose context some engine held (>= 20% of the prompt) at
  its arrival / held nowhere (evicted everywhere: a recompute);
- ``burst-warm`` / ``burst-part`` / ``burst-cold``: a tenant burst's request whose 4k prefix some engine held
  whole / held in part (20% or more, its tail evicted) / held nowhere; ``burst-first``: cold, and its
  tenant's first burst in the measured window;
- ``oneoff``: a one-off (in family c all decode-heavy: 800-1,600 output tokens on 200-600 prompt tokens).

Causes (the first that applies): ``preempted`` (recomputed after a preemption before its first token),
``miss`` (sent to a replica holding less than the best engine did), ``queued`` (at least half its TTFT
waiting for its first step: admission by memory or the token budget), ``compute`` (the rest: its own
prefill and the steps it shared). Also printed: at the chosen replica on arrival, the mean requests
waiting and running, free KV blocks, and running one-offs still decoding (what a request lands behind).
With ``--at=MS``, ``T`` is that fixed TTFT instead of B's p90 (who is slow at all, not only who crosses
the p90). With ``--list``, every request that is slow (>= T) under A and not under B, with B's fate.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from request_traces import build, trace
from script_usage import usage_or_exit


@dataclass(slots=True)
class At:
    """The chosen replica on arrival (filled once the request is routed)."""

    turn: int
    heavy: bool
    waiting: list[int]
    running: list[int]
    free: list[int]
    decoding: list[int]  # running one-offs (max_tokens > prompt) not finished


def watch(sim: Any) -> tuple[dict[str, At], dict[str, int]]:
    seen: dict[str, At] = {}
    preempted: dict[str, int] = {}
    turns: Counter[str] = Counter()
    engines = [r.engine for r in sim.replicas]
    arrive = sim._arrive

    def hook(spec: Any) -> None:
        rid = f"r{sim._n}"
        if spec.session:
            turns[spec.session] += 1
        heavy = (spec.max_tokens or 0) > len(spec.prompt_ids)
        seen[rid] = At(
            turns[spec.session] if spec.session else 0,
            heavy,
            [e.num_waiting for e in engines],
            [e.num_running for e in engines],
            [e.pool.num_free for e in engines],
            [sum(1 for s in e._running if s.req.max_tokens > s.plen) for e in engines],
        )
        arrive(spec)

    sim._arrive = hook  # type: ignore[method-assign]
    for rep in sim.replicas:
        fin = rep.on_finished

        def done(s: Any, t: float, fin: Any = fin) -> None:
            preempted[s.request_id] = s.num_preemptions
            fin(s, t)

        rep.on_finished = done
    return seen, preempted


def klass(r: Any, at: At, burst_first: bool) -> str:
    warm = r.best_cached >= 0.2 * r.prompt
    if r.cls == "session":
        if at.turn <= 1:
            return "turn1"
        return "turnK-warm" if warm else "turnK-lost"
    if r.cls == "burst":
        if r.best_cached >= r.prompt - 128:
            return "burst-warm"
        return "burst-part" if warm else ("burst-first" if burst_first else "burst-cold")
    return "oneoff"


def cause(r: Any, pre: int) -> str:
    if pre:
        return "preempted"
    if r.here_cached + 16 < r.best_cached:
        return "miss"
    if r.queue >= 0.5 * r.ttft:
        return "queued"
    return "compute"


def run(make: Any, pol: str) -> tuple[dict[str, Any], dict[str, tuple[Any, str, str, At]]]:
    sim, cls = make(pol)
    recs, _seen = trace(sim, cls)
    at, pre = watch(sim)
    row = sim.run().row
    first_seen: dict[str, float] = {}
    out: dict[str, tuple[Any, str, str, At]] = {}
    for rid, r in sorted(recs.items(), key=lambda kv: kv[1].at):
        if r.ttft <= 0 or rid not in at:
            continue
        f = first_seen.setdefault(r.group, r.at)
        a = at[rid]
        out[rid] = (r, klass(r, a, r.at - f < 1.0), cause(r, pre.get(rid, 0)), a)
    return row, out


CLASSES = (
    "turn1",
    "turnK-warm",
    "turnK-lost",
    "burst-warm",
    "burst-part",
    "burst-cold",
    "burst-first",
    "oneoff",
)
CAUSES = ("preempted", "miss", "queued", "compute")


def seed_line(
    seed: int,
    p90_a: float,
    p90_b: float,
    t: float,
    fixed: bool,
    ca: Counter[tuple[str, str]],
    cb: Counter[tuple[str, str]],
    n: int,
    diff: dict[str, int],
) -> str:
    """One seed's summary: both p90s, and ``T`` beside them (B's p90, or the ``--at`` threshold)."""
    what = "--at" if fixed else "B's p90"
    return (
        f"seed {seed}: p90 A {p90_a * 1000:.0f} ms, B {p90_b * 1000:.0f} ms; "
        f"at or over T = {t * 1000:.0f} ms ({what}): A {sum(ca.values())}, B {sum(cb.values())} of {n} "
        f"(10% = {n / 10:.0f}); A - B by class {diff}"
    )


def main() -> None:
    fixed = next((float(a[5:]) / 1000 for a in sys.argv[1:] if a.startswith("--at=")), None)
    argv = [a for a in sys.argv[1:] if a != "--list" and not a.startswith("--at=")]
    usage_or_exit(__doc__, 6)
    fam, qps, first, last, pa, pb = argv[:6]
    excess: Counter[tuple[str, str]] = Counter()
    slow_a: Counter[tuple[str, str]] = Counter()
    slow_b: Counter[tuple[str, str]] = Counter()
    pooled: dict[str, dict[str, list[Any]]] = {pa: defaultdict(list), pb: defaultdict(list)}
    for seed in range(int(first), int(last) + 1):
        _, make = build(["mixed", fam, qps, str(seed), pa, pb])
        ra, a = run(make, pa)
        rb, b = run(make, pb)
        t = fixed if fixed is not None else rb["ttft_p90"]
        for pol, runs in ((pa, a), (pb, b)):
            for r, k, c, at in runs.values():
                pooled[pol][k].append((r, c, at, r.ttft >= t))
        ca = Counter((k, c) for r, k, c, _ in a.values() if r.ttft >= t)
        cb = Counter((k, c) for r, k, c, _ in b.values() if r.ttft >= t)
        slow_a.update(ca)
        slow_b.update(cb)
        excess.update(ca)
        excess.subtract(cb)
        byk_a = Counter(k for k, _ in ca.elements())
        byk_b = Counter(k for k, _ in cb.elements())
        diff = {k: byk_a[k] - byk_b[k] for k in CLASSES if byk_a[k] != byk_b[k]}
        print(
            seed_line(seed, ra["ttft_p90"], rb["ttft_p90"], t, fixed is not None, ca, cb, len(a), diff),
            flush=True,
        )
        lost: Counter[tuple[str, str]] = Counter()
        for rid, (r, _, _, _) in a.items():
            o = b.get(rid)
            if r.cls != "burst" or o is None:
                continue
            ea, eb = r.best_cached >= r.prompt - 128, o[0].best_cached >= r.prompt - 128
            if ea != eb:
                lost["A only" if eb else "B only", f"{r.group}@{r.at:.0f}"] += 1
        per = Counter(w for w, _ in lost)
        print(
            f"  bursts whose prefix only one policy had lost (some request found under 4k cached): "
            f"A only {per['A only']}, B only {per['B only']}; "
            f"{dict(sorted((f'{w}:{g}', n) for (w, g), n in lost.items()))}"
        )
        if "--list" in sys.argv:
            for rid, (r, k, c, at) in sorted(a.items(), key=lambda kv: kv[1][0].at):
                o = b.get(rid)
                if r.ttft >= t and o is not None and o[0].ttft < t:
                    i, j = r.replica, o[0].replica
                    print(
                        f"  {rid} {k:11} {c:9} at {r.at:6.1f} s prompt {r.prompt:5} best {r.best_cached:5} "
                        f"A: rep {i} here {r.here_cached:5} w/r/free/dec {at.waiting[i]}/{at.running[i]}/"
                        f"{at.free[i]}/{at.decoding[i]} ttft {r.ttft * 1000:5.0f} queue {r.queue * 1000:5.0f}"
                        f" | B: rep {j} here {o[0].here_cached:5} w/r/free/dec {o[3].waiting[j]}/"
                        f"{o[3].running[j]}/{o[3].free[j]}/{o[3].decoding[j]} ttft {o[0].ttft * 1000:5.0f} "
                        f"({o[1]}, {o[2]})"
                    )
    what = f"{fixed * 1000:.0f} ms" if fixed is not None else "B's p90 (per seed)"
    print(f"\nPooled over seeds {first}-{last}: requests at or over {what}, by class x cause")
    print(f"{'class':12} {'cause':10} {'A':>5} {'B':>5} {'A-B':>5}")
    for k in CLASSES:
        for c in CAUSES:
            if slow_a[(k, c)] or slow_b[(k, c)]:
                print(f"{k:12} {c:10} {slow_a[(k, c)]:5} {slow_b[(k, c)]:5} {excess[(k, c)]:5}")
    tot_a, tot_b = sum(slow_a.values()), sum(slow_b.values())
    print(f"{'total':12} {'':10} {tot_a:5} {tot_b:5} {tot_a - tot_b:5}")
    print(
        "\nPer class, both policies (all measured requests): count, p90 ms, mean queue ms, slow share; "
        "slow ones' mean at the chosen replica on arrival: waiting / running / free blocks / "
        "one-offs decoding"
    )
    for pol in (pa, pb):
        off = [(r, s) for r, _, _, s in pooled[pol]["burst-warm"] if r.here_cached + 16 < r.best_cached]
        kept = [(r, s) for r, _, _, s in pooled[pol]["burst-warm"] if r.here_cached + 16 >= r.best_cached]
        print(
            f"  {pol[:28]:28} warm burst requests sent off the best holder (a second copy): {len(off)}, "
            f"{sum(s for _, s in off)} of them slow; kept at a holder: {len(kept)}, "
            f"{sum(s for _, s in kept)} slow"
        )
    for k in CLASSES:
        for pol in (pa, pb):
            xs = pooled[pol][k]
            if not xs:
                continue
            tt = sorted(r.ttft for r, _, _, _ in xs)
            slow = [(r, at) for r, _, at, s in xs if s]
            q = statistics.fmean(r.queue for r, _, _, _ in xs) * 1000
            if slow:
                w = statistics.fmean(at.waiting[r.replica] for r, at in slow)
                n = statistics.fmean(at.running[r.replica] for r, at in slow)
                fr = statistics.fmean(at.free[r.replica] for r, at in slow)
                d = statistics.fmean(at.decoding[r.replica] for r, at in slow)
                tail = f"slow {len(slow)}: {w:.1f} / {n:.1f} / {fr:.0f} / {d:.1f}"
            else:
                tail = "slow 0"
            print(
                f"  {k:12} {pol[:28]:28} n {len(xs):5} p90 {tt[int(0.9 * len(tt))] * 1000:6.0f} "
                f"queue {q:6.0f}  {tail}"
            )


if __name__ == "__main__":
    main()
