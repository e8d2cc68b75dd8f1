"""Session 33's "index-held" second copies of a warm prefix, split by whether a prefill was pending there.

    PYTHONPATH=src:scripts python scripts/pending_copies_s34.py POLICY FIRST LAST [--window SEED T0 T1]

Runs ``copy_origins_s33.py``'s recording on family c at 6.992 req/s (seeds FIRST..LAST) and splits its
``index-held`` copies by the chosen replica's prefill tokens dispatched and not started at the pick: at
least 3,000 (the prefix's own ~4,196 booked there for an earlier request: a copy still being computed,
``pending``) or fewer (the engine had evicted what the index credited, ``evicted``); each also ``slow``
(TTFT >= 300 ms) or not; for the pending ones, the class of their burst's first request (the group's
earliest within 3 s before: ``burst-cold`` / ``burst-first`` = it found the prefix nowhere). With
``--window SEED T0 T1`` it lists instead every measured pick of that seed arriving between T0 and T1 s:
class, cause, TTFT, chosen replica, the index's credit, the engines' truth, tokens ahead, requests in
flight and costs per replica (fleet-multiturn-s34.md section 1's examples).
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import gap_attr_s32 as gap
import request_traces
from copy_origins_s33 import Pick, record
from script_usage import usage_or_exit


def run(policy: str, seed: int, engines: list[Any], log: dict[str, Pick]) -> dict[str, Any]:
    log.clear()
    _, make_sim = request_traces.build(["mixed", "c", "6.992", str(seed), policy])

    def make(pol: str) -> Any:
        sim, classify = make_sim(pol)
        engines[:] = [r.engine for r in sim.replicas]
        return sim, classify

    _, out = gap.run(make, policy)
    return out


def main() -> None:
    usage_or_exit(__doc__, 3)
    engines: list[Any] = []
    log: dict[str, Pick] = {}
    record(engines, log)
    if "--window" in sys.argv:
        i = sys.argv.index("--window")
        seed, t0, t1 = int(sys.argv[i + 1]), float(sys.argv[i + 2]), float(sys.argv[i + 3])
        out = run(sys.argv[1], seed, engines, log)
        for rid, (r, klass, cause, _) in sorted(out.items(), key=lambda kv: kv[1][0].at):
            if t0 <= r.at <= t1 and rid in log:
                held, eng, ahead, load, costs = log[rid]
                print(
                    f"{rid} {r.at:7.2f} s {r.group:6} {klass:11} {cause:9} ttft {r.ttft * 1000:4.0f} ms to "
                    f"{r.replica} index {[round(h) for h in held]} engines {eng} ahead {ahead} "
                    f"requests {load} costs {[round(c) for c in costs]}"
                )
        return
    policy, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    total: Counter[tuple[str, bool]] = Counter()
    origins: Counter[str] = Counter()
    for seed in range(first, last + 1):
        out = run(policy, seed, engines, log)
        for rid, (r, klass, cause, _) in out.items():
            if klass != "burst-warm" or cause != "miss" or rid not in log:
                continue
            held, _eng, ahead, _load, _costs = log[rid]
            i = r.replica
            if held[i] < max(held) - 1:
                continue  # a spill: the cost chose a replica the index knew held less
            pending = ahead[i] >= 3000
            total["pending" if pending else "evicted", r.ttft >= 0.3] += 1
            if pending:
                burst = [
                    (x.at, k)
                    for x, k, _, _ in out.values()
                    if x.group == r.group and r.at - 3 <= x.at <= r.at
                ]
                origins[min(burst)[1]] += 1
    for kind in ("pending", "evicted"):
        print(f"{kind}: {total[kind, True] + total[kind, False]} ({total[kind, True]} slow)")
    print("pending copies by their burst's first request:", dict(origins))


if __name__ == "__main__":
    main()
