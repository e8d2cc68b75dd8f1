"""Paired p90 ratios of two policies' ``flip_runs_s31.py`` runs, per check (session 34's tieToEmptier on/off).

    python scripts/paired_ratio_s34.py CANDIDATE.jsonl BASELINE.jsonl

Lines are matched by (check, seed). Per check: the geometric mean over seeds of candidate / baseline p90, its
95% interval by the normal approximation over the log ratios, how many seeds are better / worse / equal, and
the mean prefix hit rates.
"""

from __future__ import annotations

import json
import math
import sys

from script_usage import usage_or_exit


def _rows(path: str) -> list[dict[str, float | int | str]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main() -> None:
    usage_or_exit(__doc__, 2)
    base = {(r["check"], r["seed"]): r for r in _rows(sys.argv[2])}
    by: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for r in _rows(sys.argv[1]):
        b = base.get((r["check"], r["seed"]))
        if b is not None:
            pair = (int(r["seed"]), float(r["p90_ms"]), float(b["p90_ms"]), float(r["hit"]), float(b["hit"]))
            by.setdefault(str(r["check"]), []).append(pair)
    for check, rows in by.items():
        rows.sort()
        logs = [math.log(c / b) for _, c, b, _, _ in rows]
        n = len(logs)
        m = sum(logs) / n
        sd = (sum((x - m) ** 2 for x in logs) / (n - 1)) ** 0.5 if n > 1 else 0.0
        h = 1.96 * sd / n**0.5
        better = sum(c < b for _, c, b, _, _ in rows)
        worse = sum(c > b for _, c, b, _, _ in rows)
        cand, bl = _geomean([r[1] for r in rows]), _geomean([r[2] for r in rows])
        hit_c, hit_b = sum(r[3] for r in rows) / n, sum(r[4] for r in rows) / n
        print(
            f"{check}: seeds {rows[0][0]}-{rows[-1][0]} (n={n}); candidate gm {cand:.1f}, "
            f"baseline gm {bl:.1f}; "
            f"paired {math.exp(m):.3f} ({math.exp(m - h):.3f}-{math.exp(m + h):.3f}); better/worse/equal "
            f"{better}/{worse}/{n - better - worse}; hit {hit_c:.4f} vs {hit_b:.4f}"
        )


if __name__ == "__main__":
    main()
