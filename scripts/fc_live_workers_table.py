"""The run table of the `--workers` goal's live runs (docs/benchmarks/flowcontrol.md, sessions 24-27), read
from the folders `scripts/fc_live_workers_seeds.sh` writes (`seed-S-MIX-wN/`: meta.json,
flowcontrol-live.json).

    python scripts/fc_live_workers_table.py OUT

Prints one markdown row per run, in the order the runner made them (start time), the columns of session 24's
table, and then the `fc_live_ratio_interval.py --goal` command for each worker count (the seeds whose calm and
flood runs both completed, in seed order).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEAD = (
    "| seed, mix | start UTC | load avg start -> end (peak while running) | quiet requests | quiet p90 s "
    "| critical SLO | batch SLO | flood tenant p90 s | shed | goodput req/s | slowest tenth: n, TTFT mean "
    "| its wait in kvgate | after the pick | sim steps late | errors |"
)


def _run(bench: dict[str, Any]) -> dict[str, Any]:
    (run,) = bench["runs"].values()
    return dict(run)


def _p90(group: dict[str, Any], digits: int) -> str:
    """A group's p90 TTFT. JSON's null is either no request or (fc28) a p90 past the run's end, among the
    group's ``unfinished`` requests (``inf``, written null): the count tells which."""
    v = group["p90_ttft_s"]
    if v is not None:
        return f"{v:.{digits}f}"
    return f"inf ({group['unfinished']} unanswered)" if group.get("unfinished") else "- (no requests)"


def row(meta: dict[str, Any], bench: dict[str, Any]) -> str:
    r = _run(bench)
    bands = r["bands"]
    crit = next(v for k, v in bands.items() if k.startswith("critical"))
    batch = next(v for k, v in bands.items() if k.startswith("batch"))
    slow = r["trace_summary"]["slowest_tenth"]
    name = f"{meta['seed']}, {meta['mix']}" + (", workers 1" if meta["workers"] == 1 else "")
    load = f"{meta['loadavg_start'].split()[0]} -> {meta['loadavg_end'].split()[0]}"
    during = [float(la.split()[0]) for _, la in meta.get("loadavg_during", [])]
    if during:  # (the runner's samples while the bench ran, session 28 on)
        load += f" (peak {max(during):.2f})"
    cells = [
        name,
        meta["start_utc"],
        load,
        str(r["quiet"]["requests"]),
        _p90(r["quiet"], 4),
        f"{crit['slo_attainment']:.3f}",
        f"{batch['slo_attainment']:.3f}",
        _p90(r["tenants"]["t0"], 2),
        f"{r['shed']} ({100 * r['shed_rate']:.1f}%)",
        f"{r['goodput_rps']:.2f}",
        f"{slow['n']}, {slow['ttft_mean']:.3f}",
        f"{slow['epp_mean']:.3f} ({100 * slow['epp_over_1ms']:.0f}%)",
        f"{slow['server_mean']:.3f}",
        f"{100 * r['sim_late_frac']:.1f}%",
        str(r["errors"]),
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    runs = []
    for d in sorted(out.glob("seed-*-w*")):
        if not (d / "meta.json").exists():  # in progress
            continue
        meta = json.loads((d / "meta.json").read_text())
        live = d / "flowcontrol-live.json"
        runs.append(
            (meta, json.loads(live.read_text()) if live.exists() and meta.get("rc") == 0 else None, d)
        )
    runs.sort(key=lambda m: (m[0].get("start_utc") or "99", m[0]["seed"]))
    print(HEAD)
    print("|" + "---|" * 15)
    done: dict[int, dict[int, dict[str, Path]]] = {}
    for meta, bench, d in runs:
        if bench is None:
            why = meta.get("not_run") or f"rc {meta.get('rc')}"
            name = f"seed {meta['seed']}, {meta['mix']}, workers {meta['workers']}"
            print(f"<!-- {name}: not counted ({why}) -->")
            continue
        print(row(meta, bench))
        done.setdefault(meta["workers"], {}).setdefault(meta["seed"], {})[meta["mix"]] = (
            d / "flowcontrol-live.json"
        )
    for workers, seeds in sorted(done.items(), reverse=True):
        files = [
            str(p[m])
            for s, p in sorted(seeds.items())
            if {"calm", "flood"} <= p.keys()
            for m in ("calm", "flood")
        ]
        print(f"\nworkers {workers}: python scripts/fc_live_ratio_interval.py --goal {' '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
