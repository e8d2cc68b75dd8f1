"""One policy's p90 TTFT per seed on one check, as JSON lines (session 31's default-flip validation).

    PYTHONPATH=src:scripts python scripts/flip_runs_s31.py CHECK POLICY FIRST_SEED LAST_SEED

CHECK is ``a``, ``b`` or ``c`` (the multi-turn family at its 0.8 x knee point: 9.416, 8.768, 6.992 req/s,
``run_once(FAMILIES[F], POLICY, QPS, SEED, 120.0, 30.0)``, the calls ``knee_checks.py tune`` / ``mt``
make), ``c8`` (family c at 8.0 req/s), ``sp8`` (the shared-prefix knee-80% point, 14.14 req/s, 30 s, as
``knee_checks.py sp8``) or ``hetero`` (the hetero knee-80% point, 276.22 req/s, 15 s, as ``knee_checks.py
reg``). POLICY is a named policy or an EndpointPickerConfig path. One line per seed: check, policy, seed,
p90 (ms), hit rate.
"""

from __future__ import annotations

import json
import sys

from script_usage import usage_or_exit

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import run_once
from kvgate.bench.scenarios import SCENARIOS
from kvgate.bench.sweep import run_point

FAMILY_QPS = {"a": ("a", 9.416), "b": ("b", 8.768), "c": ("c", 6.992), "c8": ("c", 8.0)}


def main() -> None:
    usage_or_exit(__doc__, 4)
    check, policy, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for seed in range(first, last + 1):
        if check in FAMILY_QPS:
            fam, qps = FAMILY_QPS[check]
            row = run_once(FAMILIES[fam], policy, qps, seed, 120.0, 30.0)
        elif check == "sp8":
            row = run_point(SCENARIOS["shared-prefix"], policy, 14.14, 30.0, seed).row
        elif check == "hetero":
            row = run_point(SCENARIOS["hetero"], policy, 276.22, 15.0, seed).row
        else:
            raise SystemExit(f"unknown check {check!r}")
        out = {"check": check, "policy": policy, "seed": seed, "p90_ms": round(row["ttft_p90"] * 1000, 2)}
        out["hit"] = row.get("prefix_hit_rate")
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
