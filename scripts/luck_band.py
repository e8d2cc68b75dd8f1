"""How much of a mixed-family run's p90 TTFT is luck: the same run replayed with one pick moved.

For each seed the run is played once as is and ``N`` more times, the k-th of them (k = 1..N) with the
k-th session's first turn sent to the next replica over from the policy's pick (the rest of the run the
policy's own picks, the arrivals the same). A policy whose p90 swings over these near-identical runs is
on a threshold (family c's p90 sits where the cold bursts' share of requests crosses 10%), and one run
tells little about it. Prints per seed the plain p90 and the perturbed ones (ms), and per policy the
geometric mean over seeds of the plain p90 and of each seed's median over its N + 1 runs, both as ratios
to sglang-cache-aware's model's same figures (sglang's model is run the same way).

    PYTHONPATH=src:scripts python scripts/luck_band.py FAMILY QPS FIRST_SEED LAST_SEED N POLICY...
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
from typing import Any

from script_usage import usage_or_exit

from kvgate.bench.mixed import FAMILIES, Family
from kvgate.bench.multiturn import mixed_sim


def moved_run(fam: Family, policy: str, qps: float, seed: int, k: int) -> float:
    """The run's p90 (s) with the k-th session's first turn moved one replica over (k 0: as is)."""
    sim = mixed_sim(fam, policy, qps, seed)
    eps = sim.endpoints
    seen: set[str] = set()
    cur: list[Any] = [None]
    arrive = sim._arrive

    def note(spec: Any) -> None:
        cur[0] = spec
        arrive(spec)

    pick = sim.director.pick

    def forced(req: Any, explain: bool = False) -> Any:
        res = pick(req, explain)
        spec = cur[0]
        if k and spec.session and spec.session not in seen:
            seen.add(spec.session)
            if len(seen) == k:
                moved = eps[(eps.index(res.primary) + 1) % len(eps)]
                return dataclasses.replace(res, endpoints=[moved])
        return res

    sim._arrive = note  # type: ignore[method-assign]
    sim.director.pick = forced  # type: ignore[method-assign]
    return float(sim.run().row["ttft_p90"])


def main() -> None:
    usage_or_exit(__doc__, 6)
    fam, qps = FAMILIES[sys.argv[1]], float(sys.argv[2])
    seeds = range(int(sys.argv[3]), int(sys.argv[4]) + 1)
    n = int(sys.argv[5])
    policies = ["sglang-cache-aware", *(p for p in sys.argv[6:] if p != "sglang-cache-aware")]
    plain: dict[str, list[float]] = {p: [] for p in policies}
    median: dict[str, list[float]] = {p: [] for p in policies}
    for seed in seeds:
        for pol in policies:
            runs = [moved_run(fam, pol, qps, seed, k) for k in range(n + 1)]
            plain[pol].append(runs[0])
            median[pol].append(statistics.median(runs))
            print(
                f"{fam.name}/{seed} @ {qps:g} {os.path.basename(pol)}: p90 {runs[0] * 1000:.0f} ms, moved "
                f"{' / '.join(f'{x * 1000:.0f}' for x in runs[1:])}, median {median[pol][-1] * 1000:.0f}",
                flush=True,
            )
    ref_plain, ref_med = plain["sglang-cache-aware"], median["sglang-cache-aware"]
    for pol in policies:

        def gm(xs: list[float], ref: list[float]) -> float:
            return math.exp(sum(math.log(a / b) for a, b in zip(xs, ref, strict=True)) / len(xs))

        print(
            f"{os.path.basename(pol)}: plain gm {gm(plain[pol], ref_plain):.3f}, "
            f"median-of-{n + 1} gm {gm(median[pol], ref_med):.3f} vs sglang's model, "
            f"runs over 1 s {sum(x > 1.0 for x in plain[pol])} plain"
        )


if __name__ == "__main__":
    main()
