"""Why one mixed-family run's p90 TTFT moves between two policies: the requests that cross it.

    PYTHONPATH=src:scripts python scripts/tail_shift_s31.py FAMILY QPS SEED POLICY_A POLICY_B

The workload is fixed by the seed, so each measured request is followed under both policies (ids in
arrival order; engine truth at arrival, as ``request_traces.py``). Prints per policy the p90, how many
requests sit in each TTFT band, how many are cold everywhere (no engine holds 20% of the prompt at
arrival: a lost session context, a first burst, a one-off), by class; then the requests that are under
A's p90 with A and at or over B's p90 with B (and the reverse), by class and by whether B found them
cold everywhere where A did not; and where B sent the decode-heavy cold one-offs (``max_tokens`` over
the prompt, the requests ``coldSpreadDecodeHeavy`` prices) compared with A.
"""

from __future__ import annotations

import itertools
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
        recs, _ = trace(sim, cls)
        row = sim.run().row
        runs[pol] = (row, {k: r for k, r in recs.items() if r.ttft > 0}, specs)
    bands = (0.2, 0.3, 0.4, 0.5)
    for pol in pols:
        row, recs, _ = runs[pol]
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
    (ra, a, specs), (rb, b, _) = runs[pols[0]], runs[pols[1]]
    p90a, p90b = ra["ttft_p90"], rb["ttft_p90"]
    common = a.keys() & b.keys()
    for name, x, y, px, py in (("into B's tail", a, b, p90a, p90b), ("out of B's tail", b, a, p90b, p90a)):
        moved = [k for k in common if x[k].ttft < px and y[k].ttft >= py]
        newly_cold = Counter(
            y[k].cls
            for k in moved
            if y[k].best_cached < 0.2 * y[k].prompt and x[k].best_cached >= 0.2 * x[k].prompt
        )
        print(
            f"{name}: {len(moved)} requests, "
            f"by class {dict(sorted(Counter(y[k].cls for k in moved).items()))}, "
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
