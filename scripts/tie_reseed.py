"""How much a mixed-family run's p90 TTFT moves with the luck a policy can draw itself: the same run (same
workload, same policy) replayed with the picker's tie-break RNG (``PluginHandle.rng``, which only the
pickers draw from) reseeded. Unlike ``luck_band.py``'s moved picks, every pick here is one the policy's
own rule makes; only its random choices among tied endpoints differ (review s14-mt).

For each seed the run is played once as is and ``N`` more times, the k-th of them (k = 1..N) with the
RNG reseeded to ``k * 7919 + seed``. Prints per seed and policy the plain p90 and the reseeded ones (ms)
and their median, and per policy the geometric mean over seeds of the plain p90 and of each seed's
median over its N + 1 runs, both as ratios to sglang-cache-aware's model's same figures (sglang's model
is run the same way), and the largest max/min over a seed's runs (geomean).

    PYTHONPATH=src:scripts python scripts/tie_reseed.py FAMILY QPS FIRST_SEED LAST_SEED N POLICY...
"""

from __future__ import annotations

import sys

from script_usage import usage_or_exit
from sim_hooks import perturbation_table

from kvgate.bench.mixed import FAMILIES, Family
from kvgate.bench.multiturn import MixedFleetSim, mixed_sim


def reseeded_sim(
    fam: Family,
    policy: str,
    qps: float,
    seed: int,
    k: int,
    duration: float = 120.0,
    warmup: float = 30.0,
) -> MixedFleetSim:
    """The run, ready to ``run()``, with its picker's RNG reseeded to ``k * 7919 + seed`` (k 0: as is)."""
    sim = mixed_sim(fam, policy, qps, seed, duration, warmup)
    if k:
        for profile in sim.director.profiles.values():
            if profile.picker is not None:
                profile.picker.handle.rng.seed(k * 7919 + seed)
    return sim


def main() -> None:
    usage_or_exit(__doc__, 6)
    fam, qps = FAMILIES[sys.argv[1]], float(sys.argv[2])
    seeds = range(int(sys.argv[3]), int(sys.argv[4]) + 1)
    n = int(sys.argv[5])
    policies = ["sglang-cache-aware", *(p for p in sys.argv[6:] if p != "sglang-cache-aware")]
    perturbation_table(
        fam, qps, seeds, n, policies,
        lambda pol, seed, k: float(reseeded_sim(fam, pol, qps, seed, k).run().row["ttft_p90"]),
        "reseeded",
    )  # fmt: skip


if __name__ == "__main__":
    main()
