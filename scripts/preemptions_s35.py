"""Per seed: a policy's p90 TTFT and the preemptions its engines made (session 35, ``committedKv``).

    PYTHONPATH=src:scripts python scripts/preemptions_s35.py FAMILY QPS FIRST LAST POLICY...

One mixed run per seed and policy (``mixed_sim``: 120 s measured, 30 s warm-up, as ``flip_runs_s31.py``);
a preemption is the simulated vLLM engine freeing a running request's blocks to make room and computing
it again later. Prints, per policy, ``(seed, p90 ms, preemptions)`` and the preemptions' sum.
"""

from __future__ import annotations

import sys

from script_usage import usage_or_exit

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim


def main() -> None:
    usage_or_exit(__doc__, 5)
    fam, qps, first, last = FAMILIES[sys.argv[1]], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for pol in sys.argv[5:]:
        rows = []
        for seed in range(first, last + 1):
            sim = mixed_sim(fam, pol, qps, seed)
            row = sim.run().row
            rows.append(
                (seed, round(row["ttft_p90"] * 1000), sum(r.engine.num_preemptions for r in sim.replicas))
            )
        print(pol, rows, "preemptions", sum(r[2] for r in rows), flush=True)


if __name__ == "__main__":
    main()
