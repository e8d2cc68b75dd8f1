"""p90 TTFT of a mixed-family variant on the tuning seeds, against the sglang cache_aware model.

A tuning-side stand-in for one trait of a validation family, so that trait can be studied without
looking at the validation set: family ``a`` (or any family) with some fields changed, run at a given
load on seeds 1-3 (``run_once`` of ``src/kvgate/bench/multiturn.py``, 120 virtual s after 30 s of
warm-up), p90 per seed and the geometric mean of each policy's p90 over sglang-cache-aware's.

    PYTHONPATH=src python scripts/family_variant.py a:tenant_prefix=4096 7.5 kvgate kvgate-precise
"""

from __future__ import annotations

import statistics
import sys

from sim_setup import family

from kvgate.bench.mixed import TUNING_SEEDS
from kvgate.bench.multiturn import run_once

BASELINE = "sglang-cache-aware"


def main() -> None:
    fam = family(sys.argv[1])
    qps = float(sys.argv[2])
    policies = list(dict.fromkeys([*sys.argv[3:], BASELINE]))
    p90: dict[str, list[float]] = {}
    for policy in policies:
        p90[policy] = [run_once(fam, policy, qps, s, 120.0, 30.0)["ttft_p90"] * 1000 for s in TUNING_SEEDS]
    base = p90[BASELINE]
    for policy, v in p90.items():
        ratio = statistics.geometric_mean(a / b for a, b in zip(v, base, strict=True))
        print(f"{policy}: p90 {' / '.join(f'{x:.0f}' for x in v)} ms, vs {BASELINE} {ratio:.2f}")


if __name__ == "__main__":
    main()
