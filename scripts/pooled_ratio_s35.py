"""One check's p90 ratio of two policies pooled over several sessions' ``flip_runs_s31.py`` run files.

    python scripts/pooled_ratio_s35.py CHECK POLICY_A POLICY_B RUNS.jsonl [RUNS.jsonl ...]

Per file: the seeds both policies ran on CHECK and the geometric mean of A / B p90 over them; then all of
them pooled (each file's seeds are its session's own fresh seeds, each policy as it was that session), with
a 95% interval by the normal approximation over the log ratios.
"""

from __future__ import annotations

import json
import math
import sys

from script_usage import usage_or_exit


def main() -> None:
    usage_or_exit(__doc__, 4)
    check, pa, pb, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    pooled: list[float] = []
    for path in files:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        a = {r["seed"]: r["p90_ms"] for r in rows if r["policy"] == pa and r["check"] == check}
        b = {r["seed"]: r["p90_ms"] for r in rows if r["policy"] == pb and r["check"] == check}
        logs = [math.log(a[s] / b[s]) for s in sorted(set(a) & set(b))]
        if logs:
            print(f"{path}: {len(logs)} seeds, {math.exp(sum(logs) / len(logs)):.3f}")
        pooled += logs
    if len(pooled) < 2:
        raise SystemExit("fewer than two paired seeds")
    m = sum(pooled) / len(pooled)
    half = 1.96 * math.sqrt(sum((x - m) ** 2 for x in pooled) / (len(pooled) - 1) / len(pooled))
    print(
        f"pooled: {len(pooled)} seeds, {math.exp(m):.3f} ({math.exp(m - half):.3f}-{math.exp(m + half):.3f})"
    )


if __name__ == "__main__":
    main()
