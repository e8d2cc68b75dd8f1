"""Why one mixed-family run's p90 TTFT moves between two policies: the requests that cross it.

    PYTHONPATH=src:scripts python scripts/tail_shift_s31.py FAMILY QPS SEED POLICY_A POLICY_B

The workload is fixed by the seed, so each measured request is followed under both policies (ids in
arrival order; engine truth at arrival, as ``request_traces.py``). Prints per policy the p90, how many
requests sit in each TTFT band, how many are cold everywhere (no engine holds 20% of the prompt at
arrival: a lost session context, a first burst, a one-off), by class; then the requests that are under
A's p90 with A and at or over B's p90 with B (and the reverse), by class and by whether B found them
cold everywhere where A did not; and where B sent the decode-heavy cold one-offs (``max_tokens`` over
the prompt, the requests ``coldSpreadDecodeHeavy`` prices) compared with A. Also, per policy, the
warm burst and session requests (some engine holds 20% of the prompt) sent to a best holder or
elsewhere (a second copy, a spill), with their p90.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from collections import Counter
from typing import Any

from request_traces import build, trace
from script_usage import usage_or_exit


def main() -> None:
    usage_or_exit(__doc__, 5)
    pols, make = build(["mixed", *sys.argv[1:6]])
    runs: dict[str, Any] = {}
    for pol in pols:
        sim, cls = make(pol)
        specs: dict[str, Any] = {}
        arrive = sim._arrive

        def keep(spec: Any, sim: Any = sim, specs: dict[str, Any] = specs, arrive: Any = arrive) -> None:
            specs[f"r{sim._n}"] = spec
            arrive(spec)

        sim._arrive = keep  # type: ignore[method-assign]
        recs, seen = trace(sim, cls)
        row = sim.run().row
        runs[pol] = (row, {k: r for k, r in recs.items() if r.ttft > 0}, specs, seen)
    bands = (0.2, 0.3, 0.4, 0.5)
    for pol in pols:
        row, recs, _, _ = runs[pol]
        t = [r.ttft for r in recs.values()]
        cnt = [sum(x < bands[0] for x in t)]
        cnt += [sum(lo <= x < hi for x in t) for lo, hi in itertools.pairwise(bands)] + [
            sum(x >= bands[-1] for x in t)
        ]
        cold = Counter(r.cls for r in recs.values() if r.best_cached < 0.2 * r.prompt)
        print(
            f"{pol}: p90 {row['ttft_p90'] * 1000:.0f} ms, hit {row['prefix_hit_rate']:.3f}, "
            f"{len(t)} requests; "
            f"TTFT < 200 / 200-300 / 300-400 / 400-500 / >= 500 ms: {' / '.join(map(str, cnt))}; "
            f"cold everywhere by class {dict(sorted(cold.items()))}"
        )
    for pol in pols:
        recs, seen = runs[pol][1], runs[pol][3]
        for cls in ("burst", "session"):
            warm = {k: r for k, r in recs.items() if r.cls == cls and r.best_cached >= 0.2 * r.prompt}
            held = {k: r for k, r in warm.items() if r.here_cached >= r.best_cached}
            off = sorted(r.ttft * 1000 for r in warm.values() if r.here_cached < r.best_cached)
            ht = sorted(r.ttft * 1000 for r in held.values())
            q = [f"{len(x)}, p90 {x[int(0.9 * len(x))]:.0f} ms" if x else "0" for x in (ht, off)]
            at = [
                (seen[k].waiting[r.replica], seen[k].running[r.replica]) for k, r in held.items() if k in seen
            ]
            mq = statistics.mean(r.queue for r in held.values()) * 1000 if held else 0.0
            w, n = (statistics.mean(x[i] for x in at) for i in (0, 1)) if at else (0.0, 0.0)
            print(
                f"{pol}: warm {cls} requests at a best holder {q[0]} (at arrival there: waiting {w:.2f}, "
                f"running {n:.1f}; queued {mq:.0f} ms mean); elsewhere {q[1]}"
            )
    (ra, a, specs, _), (rb, b, _, _) = runs[pols[0]], runs[pols[1]]
    p90a, p90b = ra["ttft_p90"], rb["ttft_p90"]
    common = a.keys() & b.keys()
    for name, x, y, px, py in (("into B's tail", a, b, p90a, p90b), ("out of B's tail", b, a, p90b, p90a)):
        moved = [k for k in common if x[k].ttft < px and y[k].ttft >= py]
        newly_cold = Counter(
            y[k].cls
            for k in moved
            if y[k].best_cached < 0.2 * y[k].prompt and x[k].best_cached >= 0.2 * x[k].prompt
        )
        bursts = Counter(f"{y[k].group}@{y[k].at:.0f}" for k in moved if y[k].cls == "burst")
        print(
            f"{name}: {len(moved)} requests, "
            f"by class {dict(sorted(Counter(y[k].cls for k in moved).items()))} "
            f"(burst requests by tenant @ arrival s: {dict(bursts)}), "
            f"cold everywhere only under the slower policy {dict(sorted(newly_cold.items()))}"
        )
    heavy = [
        k for k in common if a[k].cls == "oneoff" and (getattr(specs[k], "max_tokens", 0) or 0) > a[k].prompt
    ]
    moved_heavy = [k for k in heavy if a[k].replica != b[k].replica]
    print(f"decode-heavy one-offs measured: {len(heavy)}, sent elsewhere under B: {len(moved_heavy)}")
    first = min((k for k in common if a[k].replica != b[k].replica), key=lambda k: a[k].at, default=None)
    if first is not None:
        print(f"first measured request routed differently: {first} ({a[first].cls}, at {a[first].at:.1f} s)")


if __name__ == "__main__":
    main()
