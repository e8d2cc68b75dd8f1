"""``kvgate bench flowcontrol --frontier``: SLO attainment against shed rate, per arm over a knob's settings.

Every arm of ``--arms`` runs the flooded mix at its own settings (``--ttl`` and the arm's keys) and at
every swept value (``--frontier [ARM:]KNOB=V1,...``; knobs in ``kvgate.bench.frontier.KNOBS``), per
seed, on the same arrivals as ``kvgate bench flowcontrol``. Each arm's points give its frontier
(``kvgate.bench.frontier``), and each arm's own setting is compared with every other arm's frontier at
its own shed rate: "better SLO attainment than the reference at the same shed rate", measured.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from kvgate.bench import frontier as fr
from kvgate.bench.flowcontrol_bench import Mix, _f, p90_ratio, rates, sim_from_args, summarize
from kvgate.bench.outdir import wrote
from kvgate.bench.report import write_json


def _setting_row(
    s: dict[str, Any], knob: str, value: float, default: bool, calm_p90: float | None
) -> dict[str, Any]:
    q = s["quiet"]["p90_ttft_s"]
    return {
        "knob": knob,
        "value": value,
        "default": default,
        "shed_rate": s["shed_rate"],
        "slo_attainment": s["slo_attainment"],
        "shed_429": s["shed_429"],
        "shed_503": s["shed_503"],
        "quiet_p90_vs_calm": p90_ratio(q, calm_p90),
        "critical_slo_attainment": s["bands"]["critical (10)"]["slo_attainment"],
        "batch_slo_attainment": s["bands"]["batch (-1)"]["slo_attainment"],
        "batch_shed": s["bands"]["batch (-1)"]["shed"],
        "shed_by_tenant": {t: g["shed"] for t, g in s["tenants"].items() if g["shed"]},
    }


def frontier_main(args: argparse.Namespace, argv: list[str]) -> int:
    """``--frontier``: every arm on the flooded mix at its own settings (``default``) and at each swept
    knob value, per seed; each arm's frontier (``kvgate.bench.frontier``); each arm's own setting against
    every other arm's frontier at its shed rate. The ``calm`` mix runs once per arm (own settings) for
    the quiet tenants' ratio."""
    arms = args.arms.split(",")
    try:
        plan = fr.sweeps(args.frontier, arms)
    except ValueError as e:
        raise SystemExit(f"kvgate bench flowcontrol: {e}") from None
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    horizon = args.duration + 60.0
    doc: dict[str, Any] = {
        "command": "kvgate bench flowcontrol " + " ".join(argv),
        "load": args.load,
        "replicas": args.replicas,
        "max_num_seqs": args.max_num_seqs,
        "critical_slo_s": args.critical_slo,
        "critical_burst": args.critical_burst,
        "knobs": {k: v for k, v in fr.KNOBS.items() if any(k == kn for p in plan.values() for kn, _ in p)},
        "sweeps": {arm: [[k, v] for k, v in settings] for arm, settings in plan.items()},
        "seeds": {},
    }
    for seed in seeds:
        cap, base = rates(args.replicas, args.profile, seed, args.max_num_seqs, args.load, args.duration)
        # the plain run's mixes: ``--critical-burst`` as well as ``--critical-slo`` (review s26-rev-fc26 F3)
        burst = args.critical_burst
        calm_arrivals = Mix(base, "calm", args.duration, critical_burst=burst).arrivals(random.Random(seed))
        flood_arrivals = Mix(base, "flood", args.duration, critical_burst=burst).arrivals(random.Random(seed))
        per_arm: dict[str, Any] = {}
        for arm in arms:
            calm = summarize(sim_from_args(args, arm, seed).simulate(calm_arrivals, horizon), args.warmup)
            calm_p90 = calm["quiet"]["p90_ttft_s"]
            own = summarize(sim_from_args(args, arm, seed).simulate(flood_arrivals, horizon), args.warmup)
            rows = [_setting_row(own, "ttl", args.ttl, True, calm_p90)]
            for knob, value in plan[arm]:
                if knob == "ttl" and value == args.ttl:
                    continue  # (the arm's own setting, already run)
                sim = sim_from_args(args, arm, seed, knob, value)
                rows.append(_setting_row(summarize(sim.simulate(flood_arrivals, horizon), args.warmup),
                                         knob, value, False, calm_p90))  # fmt: skip
            points = [fr.Point(r["knob"], r["value"], r["shed_rate"], r["slo_attainment"]) for r in rows]
            corners = fr.frontier(points)
            for r, pt in zip(rows, points, strict=True):
                r["on_frontier"] = pt in corners
            per_arm[arm] = {"calm_quiet_p90_s": calm_p90, "settings": rows, "frontier": corners}
        compares = []
        for a in arms:
            own_pt = next(
                fr.Point(r["knob"], r["value"], r["shed_rate"], r["slo_attainment"])
                for r in per_arm[a]["settings"]
                if r["default"]
            )
            for b in arms:
                if b != a:
                    compares.append({"arm": a, "against": b, **fr.compare(own_pt, per_arm[b]["frontier"])})
        gaps = [
            {"arm": a, "against": b, "at": fr.gap(per_arm[a]["frontier"], per_arm[b]["frontier"])}
            for i, b in enumerate(arms)
            for a in arms[i + 1 :]  # (a later arm against an earlier one: --arms names the reference first)
        ]
        for a in arms:
            per_arm[a]["frontier"] = [
                {"knob": c.knob, "value": c.value, "shed_rate": c.shed_rate, "slo_attainment": c.attainment}
                for c in per_arm[a]["frontier"]
            ]
        print(f"frontier: seed {seed} done", file=sys.stderr, flush=True)
        doc["seeds"][str(seed)] = {"capacity_rps": cap, "base_rate_rps": base, "arms": per_arm,
                                   "compare": compares, "frontier_gap": gaps}  # fmt: skip
    doc["summary"] = frontier_summary(doc)
    doc["gap_summary"] = gap_summary(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "flowcontrol-frontier.json", doc)
    print(render_frontier(doc))
    print()
    wrote(args.out / "flowcontrol-frontier.json")
    return 0


def _tally(ds: list[float | None]) -> dict[str, Any]:
    """Differences over the seeds (seed order): how many above, at or below, out of reach (None)."""
    return {
        "above": sum(1 for d in ds if d is not None and d > 0),
        "not_above": sum(1 for d in ds if d is not None and d <= 0),
        "out_of_reach": sum(1 for d in ds if d is None),
        "deltas": ds,
    }


def gap_summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (arm, against) pair and grid shed rate over the seeds: the frontiers' differences, seed order."""
    rows: dict[tuple[str, str, float], list[float | None]] = {}
    for cell in doc["seeds"].values():
        for g in cell["frontier_gap"]:
            for at in g["at"]:
                rows.setdefault((g["arm"], g["against"], at["shed_rate"]), []).append(at["delta"])
    return [
        {
            "arm": a,
            "against": b,
            "shed_rate": s,
            **_tally(ds),
        }
        for (a, b, s), ds in rows.items()
    ]


def frontier_summary(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (arm, against) pair over the seeds: how many seeds above / at or below / out of reach, and
    the differences in seed order."""
    pairs: dict[tuple[str, str], list[float | None]] = {}
    for cell in doc["seeds"].values():
        for c in cell["compare"]:
            pairs.setdefault((c["arm"], c["against"]), []).append(c["delta"])
    return [
        {
            "arm": a,
            "against": b,
            **_tally(ds),
        }
        for (a, b), ds in pairs.items()
    ]


def render_frontier(doc: dict[str, Any]) -> str:
    lines = [
        f"Frontier: {doc['replicas']} x {doc['max_num_seqs']}, load {doc['load']:.0%}, flooded mix; "
        "all-request SLO attainment (shed = miss) against shed rate. Knobs: "
        + "; ".join(f"{k} = {v}" for k, v in doc["knobs"].items()),
    ]
    for seed, cell in doc["seeds"].items():
        lines += [
            "",
            f"seed {seed} (capacity {cell['capacity_rps']:.1f} req/s)",
            "",
            "| arm | setting | shed | all SLO | on frontier | 429 / 503 | quiet x calm | critical "
            "| batch SLO |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, a in cell["arms"].items():
            for r in a["settings"]:
                name = f"{r['knob']}={r['value']:g}" + (" (own)" if r["default"] else "")
                lines.append(
                    f"| {arm} | {name} | {r['shed_rate']:.3f} | {_f(r['slo_attainment'], 3)} "
                    f"| {'yes' if r['on_frontier'] else ''} | {r['shed_429']} / {r['shed_503']} "
                    f"| {_f(r['quiet_p90_vs_calm'])} | {_f(r['critical_slo_attainment'], 3)} "
                    f"| {_f(r['batch_slo_attainment'], 3)} |"
                )
        lines += [
            "",
            "| arm (own setting) | shed | all SLO | against | its frontier at that shed | difference |",
            "|---|---|---|---|---|---|",
        ]
        for c in cell["compare"]:
            d = c["delta"]
            lines.append(
                f"| {c['arm']} | {c['shed_rate']:.3f} | {c['attainment']:.3f} | {c['against']} "
                f"| {_f(c['frontier_at'], 3)} | {'out of reach' if d is None else f'{d:+.3f}'} |"
            )
        for g in cell["frontier_gap"]:
            lines += [
                "",
                f"Frontiers: {g['arm']} minus {g['against']} at each shed rate",
                "",
                "| shed rate | " + " | ".join(f"{a['shed_rate']:.3f}" for a in g["at"]) + " |",
                "|---|" + "---|" * len(g["at"]),
                "| difference | "
                + " | ".join("-" if a["delta"] is None else f"{a['delta']:+.3f}" for a in g["at"])
                + " |",
            ]
    if len(doc["seeds"]) > 1:
        lines += _tally_table(
            "Over the seeds: own setting against the other arm's frontier at the same shed rate",
            doc["summary"],
            shed_rate=False,
        )
        lines += _tally_table(
            "Over the seeds: the frontiers against each other at each shed rate",
            doc["gap_summary"],
            shed_rate=True,
        )
    return "\n".join(lines)


def _tally_table(title: str, rows: list[dict[str, Any]], *, shed_rate: bool) -> list[str]:
    """A summary's rows (``_tally`` per arm pair, and per shed rate with ``shed_rate``) as a table."""
    head = ["arm", "against", *(["shed rate"] if shed_rate else []), "above", "not above", "out of reach",
            "differences (seed order)"]  # fmt: skip
    lines = ["", title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in rows:
        ds = ", ".join("-" if d is None else f"{d:+.3f}" for d in s["deltas"])
        cells = [s["arm"], s["against"], *([f"{s['shed_rate']:.3f}"] if shed_rate else [])]
        cells += [str(s["above"]), str(s["not_above"]), str(s["out_of_reach"]), ds]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
