"""Per seed: a policy's p90 TTFT and how many measured requests take 300 ms or more (the slow band).

    PYTHONPATH=src:scripts python scripts/band_counts_s33.py FAMILY POLICY FIRST LAST

FAMILY is ``a``, ``b`` or ``c`` at its 0.8 x knee point (9.416, 8.768, 6.992 req/s; the call
``flip_runs_s31.py`` makes: 120 s, 30 s warm-up). A p90 is over 300 ms exactly when more than 10% of the
measured requests are (docs/benchmarks/fleet-multiturn-s32.md), so the count is the p90's steadier
companion. Prints ``p90/count`` per seed, the p90 geomean and the count's sum.
"""

from __future__ import annotations

import math
import sys

from script_usage import usage_or_exit

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import mixed_sim

QPS = {"a": 9.416, "b": 8.768, "c": 6.992}
BAND_S = 0.3


def main() -> None:
    usage_or_exit(__doc__, 4)
    fam, policy, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    p90s: list[float] = []
    total = 0
    cells: list[str] = []
    for seed in range(first, last + 1):
        res = mixed_sim(FAMILIES[fam], policy, QPS[fam], seed, 120.0, 30.0).run()
        n = sum(1 for t in res.collector.ttft if t >= BAND_S)
        p90 = res.row["ttft_p90"]
        p90s.append(p90)
        total += n
        cells.append(f"{p90 * 1000:.0f}/{n}")
    gm = math.exp(sum(math.log(x) for x in p90s) / len(p90s))
    print(f"{fam} {policy} {first}-{last}: {' '.join(cells)}  geomean {gm * 1000:.0f} ms, >= 300 ms: {total}")


if __name__ == "__main__":
    main()
