"""The tuning-side checks a default-profile change for issue #16 must pass, for one policy.

    PYTHONPATH=src python scripts/knee_checks.py CHECK POLICY [FIRST_SEED LAST_SEED [QPS]]

CHECK is one of:
- ``tune``: the multi-turn tuning set (family a, seeds 1-3, 9.416 req/s = 0.8 x its knee; the same runs
  as ``kvgate bench multiturn --set tuning --capacities a=11.77,b=10.96,c=8.74``);
- ``var``: family a with family c's 4,096-token tenant prefix at 7.5 req/s, seeds 1-3 (a tuning-side
  stand-in for c's long bursts; ``scripts/family_variant.py a:tenant_prefix=4096 7.5``);
- ``sp``: the shared-prefix knee-80% point (14.14 req/s, 30 virtual s), seeds 0-3;
- ``sp8``: the same point, seeds 4-11 (its p90 swings by up to 25% per seed with placement luck), or
  seeds FIRST_SEED to LAST_SEED when given, at QPS req/s when given (``sp8 POLICY 4 39``: the 36
  seeds that are the point's validation set, ~5 min; one seed's kvgate / sglang ratio has a log
  standard deviation of ~0.13, so four seeds tell a 10% change from luck poorly);
- ``spw``: the shared-prefix point with a 120 s warm-up instead of 30 s (every customer seen before the
  measured window, so no first-request cold prefills in it: the steady state), seeds 0-11 or
  FIRST_SEED to LAST_SEED;
- ``mt``: the validation families b and c at their 0.8 x knee points (8.768 and 6.992 req/s, as
  ``kvgate bench multiturn --set validation --capacities a=11.77,b=10.96,c=8.74``) on seeds FIRST_SEED to
  LAST_SEED (default 104-113, a tuning set since session 10; its validation seeds are 114-133:
  ``mt POLICY 114 133``), POLICY and sglang-cache-aware side by side; a fifth argument runs family c
  at that QPS instead (a load stress on the same seeds: ``mt POLICY 104 113 8.0``, 0.92 x c's knee);
  ``gm`` is POLICY's p90 over sglang's per run, and the figures per family follow;
- ``reg``: the hetero, multi-LoRA and sharegpt knee-80% points, seed 0 (276.22 req/s 15 s, 388.08 req/s
  20 s, 276.10 req/s 20 s);
- ``rag``: the never-tuned rag family (validation only: report on it, never choose on it) at its knee-80%
  point, 6.46 req/s, 60 s after 60 s of warm-up, seeds 0-3 (as ``kvgate bench rag --quick --capacity
  knee --seeds 0-3``), or at QPS req/s when given as a fifth argument (``rag POLICY 0 3 4.04``: the
  0.5 x point); its gm is over sglang's model's stored p90s at 6.46 and 4.04 req/s, seeds 0-3.

Prints the p90 TTFT per run (ms) and the hit rate; ``gm`` is the geometric mean of the p90s over the
sglang-cache-aware model's on the same runs (``tune``, ``var``, ``sp``, and ``sp8`` for seeds 0-39;
measured once on main: the workloads are fixed by the seeds), over the default profile's (``reg``), or
the plain geometric mean in ms (``sp8`` past seed 39 or at another QPS, ``spw``).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

from script_usage import usage_or_exit

from kvgate.bench.mixed import FAMILIES, TUNING_SEEDS
from kvgate.bench.multiturn import run_once
from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.sweep import run_point

BASE = {
    "tune": [662.0, 574.0, 594.0],  # sglang-cache-aware
    "var": [675.0, 674.0, 670.0],  # sglang-cache-aware
    "sp": [556.0, 461.0, 338.0, 435.0],  # sglang-cache-aware
    "reg": [32.07, 28.77, 29.65],  # kvgate default
}
# sglang-cache-aware's p90 (ms) at the shared-prefix knee-80% point, seeds 0-39
# (``sp8 sglang-cache-aware 0 39``).
SP_SGLANG = [
    556.10, 460.50, 338.45, 435.19, 478.89, 403.34, 510.17, 343.88, 472.77, 415.67,
    395.98, 466.72, 340.37, 431.31, 396.80, 431.06, 420.44, 472.63, 364.85, 376.84,
    443.05, 419.57, 348.69, 429.79, 545.45, 364.04, 332.46, 359.23, 337.67, 487.40,
    492.73, 402.98, 446.99, 336.17, 379.15, 565.62, 472.89, 347.70, 606.22, 459.54,
]  # fmt: skip
# sglang-cache-aware's p90 (ms) at the rag points, seeds 0-3
# (docs/benchmarks/fleet-rag-quick-knee-seeds0-3.json).
RAG_SGLANG = {6.46: [2999.70, 2097.55, 1387.29, 1633.80], 4.04: [581.96, 583.96, 529.29, 544.48]}
REG = (("hetero", 276.22, 15.0), ("multi-lora", 388.08, 20.0), ("sharegpt", 276.10, 20.0))


def main() -> None:
    usage_or_exit(__doc__, 2)
    check, policy = sys.argv[1], sys.argv[2]
    t0 = time.time()
    first = {"sp": range(4), "spw": range(12), "mt": range(104, 114), "rag": range(4)}
    seeds = first.get(check, range(4, 12))
    if check in ("sp8", "spw", "mt", "rag") and len(sys.argv) > 4:
        seeds = range(int(sys.argv[3]), int(sys.argv[4]) + 1)
    base: list[float] = []
    if check == "tune":
        rows = [run_once(FAMILIES["a"], policy, 9.416, s, 120.0, 30.0) for s in TUNING_SEEDS]
    elif check == "var":
        fam = dataclasses.replace(FAMILIES["a"], tenant_prefix=4096)
        rows = [run_once(fam, policy, 7.5, s, 120.0, 30.0) for s in TUNING_SEEDS]
    elif check in ("sp", "sp8"):
        qps = float(sys.argv[5]) if check == "sp8" and len(sys.argv) > 5 else 14.14
        rows = [run_point(SCENARIOS["shared-prefix"], policy, qps, 30.0, s).row for s in seeds]
    elif check == "spw":
        sp = SCENARIOS["shared-prefix"]
        rows = [run_point(sp, policy, 14.14, 30.0, s, warmup=120.0).row for s in seeds]
    elif check == "mt":
        qc = float(sys.argv[5]) if len(sys.argv) > 5 else 6.992
        runs = [(f, q, s) for f, q in (("b", 8.768), ("c", qc)) for s in seeds]
        rows = [run_once(FAMILIES[f], policy, q, s, 120.0, 30.0) for f, q, s in runs]
        ref = [run_once(FAMILIES[f], "sglang-cache-aware", q, s, 120.0, 30.0) for f, q, s in runs]
        base = [r["ttft_p90"] * 1000 for r in ref]
        for fam in ("b", "c"):
            idx = [i for i, (f, _, _) in enumerate(runs) if f == fam]
            g = statistics.geometric_mean(rows[i]["ttft_p90"] * 1000 / base[i] for i in idx)
            print(f"mt {fam}: gm {g:.3f}; sglang p90 {' / '.join(f'{base[i]:.0f}' for i in idx)} ms")
    elif check == "reg":
        rows = [run_point(SCENARIOS[n], policy, q, d, 0).row for n, q, d in REG]
    elif check == "rag":
        qps = float(sys.argv[5]) if len(sys.argv) > 5 else 6.46
        rows = [run_point(SCENARIOS["rag"], policy, qps, 60.0, s).row for s in seeds]
        stored = RAG_SGLANG.get(qps)
        base = [stored[s] for s in seeds] if stored and all(s < 4 for s in seeds) else [1.0] * len(rows)
    else:
        raise SystemExit(f"unknown check {check!r}")
    p90 = [r["ttft_p90"] * 1000 for r in rows]
    hit = [r.get("prefix_hit_rate") for r in rows]
    if check == "sp8":
        known = all(s < len(SP_SGLANG) for s in seeds) and len(sys.argv) <= 5
        base = [SP_SGLANG[s] for s in seeds] if known else [1.0] * len(p90)
    elif check not in ("mt", "rag"):
        base = BASE[check] if check != "spw" else [1.0] * len(p90)
    gm = statistics.geometric_mean(a / b for a, b in zip(p90, base, strict=True))
    print(
        f"{check} {policy}: p90 {' / '.join(f'{x:.2f}' for x in p90)} ms, gm {gm:.3f}, "
        f"hit {' / '.join(f'{h:.3f}' if h is not None else '-' for h in hit)} ({time.time() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
