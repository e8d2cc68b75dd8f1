"""When a mixed-family run's slowest requests waited, and what each replica held then: a timeline of one
run under each policy, sampled every ``STEP`` virtual seconds (engine truth, not a picker's view).

Per sample and replica: requests waiting / running, KV blocks held by running requests (a shared
block once; of the replica's ``num_gpu_blocks``), the blocks the waiting queue's head lacks (its prompt
less the blocks it finds in use by running requests, beyond the free ones: the engine admits in order
and does not skip ahead on memory, so that head holds every request behind it), the preemptions since
the last sample, and the measured requests that arrived there in the interval with their median TTFT.
A row is printed for every sample from ``FROM`` to ``TO`` (virtual s); then per policy the measured
requests at or over the run's p90 by arrival second (class initial and replica), and every burst that
arrived in the window: its tenant, what was cached at its first request's arrival, where it went.

    PYTHONPATH=src:scripts python scripts/overload_timeline.py FAMILY QPS SEED FROM TO POLICY...

(``STEP`` 1 s; env ``TL_STEP`` changes it.)
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import Counter, defaultdict
from typing import Any

from script_usage import usage_or_exit
from tail_breakdown import instrument, mixed_class

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim


def head_shortfall(engine: Any) -> int:
    """Blocks the waiting queue's head needs beyond the free ones (0: it can start, or nothing waits)."""
    waiting = engine._waiting
    if not waiting:
        return 0
    s = waiting[0]
    bs = engine.config.block_size
    total = s.num_tokens
    max_hit = (total - 1) // bs
    engine._ensure_hashes(s, max_hit)
    hit = engine.pool.lookup(s.hashes, max_hit)
    need = -(-total // bs) - len(hit)
    return max(0, need + engine.pool.num_reviving(hit) - engine.pool.num_free)


def run(fam: Any, policy: str, qps: float, seed: int, t0: float, t1: float, step: float) -> None:
    sim = mixed_sim(fam, policy, qps, seed)
    recs = instrument(sim, mixed_class)
    engines = [r.engine for r in sim.replicas]
    rows: list[tuple[float, list[tuple[int, int, int, int, int]]]] = []
    last_pre: list[int] = []  # preemptions per replica at the last sample (none before the first)

    def sample() -> None:
        now = sim.clock.now
        if not last_pre:
            last_pre.extend(e.num_preemptions for e in engines)
        per = []
        for i, e in enumerate(engines):
            held = e.config.num_gpu_blocks - e.pool.num_free  # blocks running requests hold (shared once)
            pre = e.num_preemptions - last_pre[i]
            per.append((e.num_waiting, e.num_running, held, head_shortfall(e), pre))
            last_pre[i] = e.num_preemptions
        rows.append((now, per))
        if now + step <= t1:
            sim.clock.call_later(step, sample)

    sim.clock.call_at(t0, sample)
    row = sim.run().row
    p90 = row["ttft_p90"]
    kv = engines[0].config.num_gpu_blocks
    hit = row["prefix_hit_rate"]
    print(f"\n== {policy}: p90 {p90 * 1000:.0f} ms, hit {hit:.3f}, KV {kv} blocks a replica")
    print("  t(s)  per replica: wait/run held-blocks short pre | arrivals there (ttft med ms)")
    arrivals: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in recs.values():
        if r.ttft > 0:
            arrivals[(int((r.at - t0) // step), r.replica)].append(r.ttft)
    for k, (now, per) in enumerate(rows):
        cells = []
        for i, (w, run_, held, short, pre) in enumerate(per):
            got = arrivals.get((k - 1, i), [])
            med = f"{statistics.median(got) * 1000:5.0f}" if got else "    -"
            cells.append(f"{w:2d}/{run_:2d} {held:4d} {short:4d} {pre:2d} |{len(got):2d} {med}")
        print(f"  {now:6.1f}  " + "  ".join(cells))
    tail = sorted((r for r in recs.values() if r.ttft >= p90), key=lambda r: r.at)
    by_sec: dict[int, Counter[str]] = defaultdict(Counter)
    for r in tail:
        by_sec[int(r.at)][f"{r.cls[0]}{r.replica}"] += 1
    print(f"  requests at or over the p90 ({len(tail)}) by arrival second: class initial + replica")
    for sec in sorted(by_sec):
        print(f"    {sec:4d}: " + " ".join(f"{k}x{n}" for k, n in sorted(by_sec[sec].items())))
    bursts: dict[tuple[str, int], list[Any]] = defaultdict(list)
    starts: dict[str, float] = {}
    for r in sorted((r for r in recs.values() if r.cls == "burst" and t0 <= r.at <= t1), key=lambda r: r.at):
        if r.at - starts.get(r.group, -9.0) > 1.0:
            starts[r.group] = r.at
        bursts[(r.group, int(starts[r.group] * 10))].append(r)
    print("  bursts arriving in the window: start, tenant, cached at the first request's arrival")
    print("  (best / at its replica, tokens), replicas (requests), TTFT median / max ms")
    for (g, _), rs in sorted(bursts.items(), key=lambda kv: kv[0][1]):
        reps = Counter(r.replica for r in rs)
        ttfts = [r.ttft * 1000 for r in rs if r.ttft > 0]
        print(
            f"    {rs[0].at:6.1f} {g:>3} {rs[0].best_cached:5d}/{rs[0].here_cached:5d} "
            + ",".join(f"{k}:{n}" for k, n in sorted(reps.items()))
            + (f"  {statistics.median(ttfts):5.0f} / {max(ttfts):5.0f}" if ttfts else "")
        )


def main() -> None:
    usage_or_exit(__doc__, 6)
    fam, qps, seed = FAMILIES[sys.argv[1]], float(sys.argv[2]), int(sys.argv[3])
    t0, t1 = float(sys.argv[4]), float(sys.argv[5])
    step = float(os.environ.get("TL_STEP", "1"))
    for policy in sys.argv[6:]:
        run(fam, policy, qps, seed, t0, t1, step)


if __name__ == "__main__":
    main()
