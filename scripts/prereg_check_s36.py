"""Session 36's pre-registered rule on ``flip_runs_s31.py`` lines (fleet-multiturn-s36-prereg.md).

    python scripts/prereg_check_s36.py RUNS.jsonl CANDIDATE [CONTROL_POLICY ...]

Family c (check ``c``): the candidate against the default (``kvgate``) and against the control, the per-seed
median p90 of ``kvgate`` and the CONTROL_POLICY runs (no-mechanism perturbations): per baseline the paired
geometric mean of candidate / baseline p90 with its 95% interval (normal approximation over the log
ratios) and the seeds better / worse / equal; a pass needs better on >= 12 of 20 seeds and a geomean
< 0.97 against both. Checks ``a``, ``b``, ``sp8``, ``hetero``: the candidate against ``kvgate``, a pass
at a geomean <= 1.02. ``sglang-cache-aware`` is reported beside each, no rule.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict

from script_usage import usage_or_exit

DEFAULT, SGLANG = "kvgate", "sglang-cache-aware"


def paired(cand: dict[int, float], base: dict[int, float]) -> tuple[float, float, float, int, int, int]:
    """Geomean of cand / base over their common seeds, its 95% interval, better / worse / equal."""
    seeds = sorted(set(cand) & set(base))
    logs = [math.log(cand[s] / base[s]) for s in seeds]
    n = len(logs)
    m = sum(logs) / n
    half = 1.96 * statistics.stdev(logs) / math.sqrt(n) if n > 1 else 0.0
    better = sum(cand[s] < base[s] for s in seeds)
    worse = sum(cand[s] > base[s] for s in seeds)
    return math.exp(m), math.exp(m - half), math.exp(m + half), better, worse, n - better - worse


def line(name: str, r: tuple[float, float, float, int, int, int]) -> str:
    return f"{name} {r[0]:.3f} ({r[1]:.3f}-{r[2]:.3f}), better / worse / equal {r[3]} / {r[4]} / {r[5]}"


def main() -> None:
    usage_or_exit(__doc__, 2)
    path, cand, controls = sys.argv[1], sys.argv[2], sys.argv[3:]
    p90: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    with open(path) as f:
        for raw in f:
            if raw.strip():
                r = json.loads(raw)
                p90[(r["check"], r["policy"])][int(r["seed"])] = float(r["p90_ms"])
    verdicts: list[bool] = []
    c, d = p90[("c", cand)], p90[("c", DEFAULT)]
    runs = [d] + [p90[("c", p)] for p in controls]
    seeds = sorted(set(c).intersection(*runs))
    control = {s: statistics.median(x[s] for x in runs) for s in seeds}
    print(f"c: {len(seeds)} seeds {seeds[0]}-{seeds[-1]}; control = median of {len(runs)} runs per seed")
    for name, base in (("vs the default", d), ("vs the control", control)):
        r = paired({s: c[s] for s in seeds}, base)
        ok = r[3] >= 12 and r[0] < 0.97
        verdicts.append(ok)
        print(f"  {line(name, r)}: {'pass' if ok else 'FAIL'}")
    for who, x in ((cand, c), (DEFAULT, d), ("the control", control)):
        if p90[("c", SGLANG)]:
            print(f"  {line(f'{who} vs sglang', paired(x, p90[('c', SGLANG)]))}")
    for check in ("a", "b", "sp8", "hetero"):
        x, base = p90[(check, cand)], p90[(check, DEFAULT)]
        if not x or not base:
            print(f"{check}: not run")
            verdicts.append(False)
            continue
        r = paired(x, base)
        ok = r[0] <= 1.02
        verdicts.append(ok)
        print(f"{check}: {line('vs the default', r)}: {'pass' if ok else 'FAIL'}")
        if p90[(check, SGLANG)]:
            print(f"  {line('candidate vs sglang', paired(x, p90[(check, SGLANG)]))}")
            print(f"  {line('default vs sglang', paired(base, p90[(check, SGLANG)]))}")
    print("RULE:", "PASS" if all(verdicts) else "FAIL")


if __name__ == "__main__":
    main()
