"""Run a fleet scenario: probe capacity, sweep the QPS ladder per policy, write JSON/markdown/PNGs."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kvgate.bench import report
from kvgate.bench.fleetsim import FleetConfig, FleetResult, FleetSim
from kvgate.bench.outdir import wrote
from kvgate.bench.scenarios import Scenario


def _count(qps: float, duration: float) -> int:
    # Enough specs for the arrival process with headroom for Poisson variance; bounded.
    return min(200_000, int(qps * duration * 1.3) + 50)


def run_point(
    sc: Scenario,
    policy: str,
    qps: float,
    duration: float,
    seed: int,
    progress: Any = None,
    drain: float = 120.0,
    warmup: float | None = None,
) -> FleetResult:
    cfg_warmup = sc.warmup if warmup is None else warmup
    cfg = FleetConfig(
        warmup=cfg_warmup,
        drain=drain,
        replicas=sc.replicas,
        policy=policy,
        qps=qps,
        duration=duration,
        slo_ttft=sc.slo_ttft,
        seed=seed,
        max_requests=_count(qps, cfg_warmup + duration),
        # Share of requests sent around the picker (the precise benchmark's ``bypass`` fleet).
        bypass_fraction=float(sc.extra.get("bypass_fraction", 0.0)),
    )
    sim = FleetSim(cfg, sc.workload(seed, cfg.max_requests))
    return sim.run(progress)


def probe_capacity(sc: Scenario, policy: str, seed: int, duration: float) -> float:
    """Req/s served under ``policy`` when offered more than the fleet can take (``sc.probe_qps``)."""
    # No drain: count only what completed while arrivals kept the fleet saturated, after the
    # warm-up and the first quarter of the window (the fill-up).
    res = run_point(sc, policy, sc.probe_qps, duration, seed, drain=0.0)
    t_from = sc.warmup + duration / 4
    done = sum(1 for t in res.done_times if t >= t_from)
    return done / (sc.warmup + duration - t_from)


KNEE_LADDER = (0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1)  # fractions of the served capacity tried for the knee
# Halvings of the gap between the last ladder load within the knee and the first past it: the ladder's
# steps are 0.1 x the served capacity (~38 req/s on hetero), too coarse to rank policies near each other.
# Nominal precision only: each point is one run of the window and p90 need not rise with load (on
# hetero a policy passes again above a failed load), so the bisected knee is one crossing among several.
KNEE_REFINE = 3


def search_knee(
    p90_at: Callable[[float], float | None], ladder: Sequence[float], base: float, refine: int = KNEE_REFINE
) -> tuple[float, list[tuple[float, float | None]]]:
    """``report.find_knee`` over ``ladder`` (upwards, stopping at the first load past the knee), then
    bisect between the last load within it and the first past it ``refine`` times. Returns the knee and
    every (load, p90) tried; the knee is ``find_knee`` of those points (every load below it passed)."""
    pts: list[tuple[float, float | None]] = []

    def within(q: float) -> bool:
        p90 = p90_at(q)
        pts.append((q, p90))
        return p90 is not None and p90 <= report.KNEE_FACTOR * base

    low, high = 0.0, None
    for q in ladder:
        if not within(q):
            high = q
            break  # past the knee: higher loads cannot count
        low = q
    if low > 0 and high is not None:
        for _ in range(refine):
            mid = round((low + high) / 2, 2)
            if mid in (low, high):
                break
            if within(mid):
                low = mid
            else:
                high = mid
    return report.find_knee(pts, base), pts


P90At = Callable[[str, float], float | None]  # (policy, offered load) -> p90 TTFT, None if none finished


def _p90_at(sc: Scenario, seed: int, duration: float) -> P90At:
    """One fleet run per (policy, load), remembered: the per-policy knees re-read the capacity's points."""
    seen: dict[tuple[str, float], float | None] = {}

    def p90_at(pol: str, q: float) -> float | None:
        if (pol, q) not in seen:
            seen[pol, q] = run_point(sc, pol, q, duration, seed).row["ttft_p90"]
        return seen[pol, q]

    return p90_at


def knee_capacity(
    sc: Scenario,
    policies: list[str],
    seed: int,
    duration: float,
    served: float,
    console: Console,
    *,
    refine: int = 0,
    p90_at: P90At | None = None,
    label: str = "knee",
    own_base: bool = False,
) -> tuple[float, dict[str, Any]]:
    """The highest offered load whose p90 TTFT stays within ``KNEE_FACTOR`` x the unloaded p90 (the p90
    at 0.1 x ``served``), searched for each policy (``search_knee``), best over ``policies``. Loads:
    fractions of the served capacity (``KNEE_LADDER``), then ``refine`` bisections (0: the ladder alone).

    The unloaded p90 is shared, the lowest of ``policies``' (the capacity that scales the sweep, as
    published since it was added), or with ``own_base`` each policy's own, so that a policy's knee does
    not depend on which others are compared (review s25-rev-hetero25 F1). A policy that finishes nothing
    at 0.1 x has no say in the shared base (F2: it made it 0.0, zeroing every knee) and, with
    ``own_base``, no knee (0.0)."""
    p90_at = p90_at or _p90_at(sc, seed, duration)
    unloaded = {pol: p90_at(pol, 0.1 * served) for pol in policies}
    shared = min((p for p in unloaded.values() if p is not None), default=None)
    ladder = [round(served * f, 2) for f in KNEE_LADDER]
    knees: dict[str, float] = {}
    points: dict[str, list[tuple[float, float | None]]] = {}
    for pol in policies:
        base = unloaded[pol] if own_base else shared
        if base is None:
            knees[pol], points[pol] = 0.0, []
            console.print(f"  {label} {pol:>18}: none (nothing finished at 0.1 x served)")
            continue
        knees[pol], points[pol] = search_knee(partial(p90_at, pol), ladder, base, refine)
        console.print(f"  {label} {pol:>18}: {knees[pol]:.1f} req/s (unloaded p90 {base * 1000:.0f} ms)")
    info = {
        "unloaded_p90_s": unloaded if own_base else shared,
        "threshold": "own" if own_base else "shared",
        "knee_req_per_s": knees,
        "points": points,
        "refine": refine,
    }
    return max(knees.values()) or ladder[0], info


def knee_policies(sc: Scenario, policies: list[str] | None) -> list[str]:
    """The scenario's probe policies, then every policy the run compares: each gets its own knee."""
    return list(dict.fromkeys([*sc.probe_policies, *(policies or [])]))


def _capacity_md(sc: Scenario, probes: dict[str, float], knee: dict[str, Any]) -> str:
    """With the knee, per policy: served under the probe's overload and its own knee."""
    own = knee.get("per_policy")
    if not own:
        return ""
    knees, base = own["knee_req_per_s"], own["unloaded_p90_s"]

    def ms(p90: float | None) -> str:
        return "-" if p90 is None else f"{p90 * 1000:.1f}"

    lines = [
        f"| policy | served at {sc.probe_qps:g} QPS offered (req/s) | unloaded p90 (ms) | own knee (req/s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {pol} | {probes[pol]:.1f} | {ms(base[pol])} | {knees[pol]:.1f} |" for pol in knees]
    return "\n".join(lines) + (
        f"\n\nOwn knee: the highest load with p90 TTFT <= {report.KNEE_FACTOR:g} x the policy's own unloaded "
        f"p90 (at 0.1 x served; '-': nothing finished, no knee), ladder "
        f"{', '.join(f'{f:g}' for f in KNEE_LADDER)} x served then {own['refine']} bisections (nominal "
        "precision: each point is one run, and p90 need not rise with load).\n\n"
    )


def run_scenario(
    sc: Scenario,
    *,
    quick: bool,
    seed: int,
    out: Path,
    policies: list[str] | None = None,
    console: Console | None = None,
    capacity: str = "served",
    seeds: Sequence[int] = (),
    own_knees: bool = True,
) -> dict[str, Any]:
    """Probe capacity on ``seed`` (served rate, or the knee), then run every load point of the ladder for
    every policy. ``seeds``: run the points for each of these seeds instead (capacity still from ``seed``)
    and add a per-load summary over seeds (``report.seed_summary``). ``own_knees`` (with the knee): also
    search each compared policy's own knee; off, the run is the knee capacity and sweep alone."""
    console = console or Console()
    run_seeds = list(seeds) or [seed]
    pols = policies or sc.policies
    fractions = sc.quick_fractions if quick else sc.load_fractions
    duration = sc.quick_duration if quick else sc.duration
    wall0 = time.perf_counter()
    console.print(f"[bold]{sc.title}[/bold]  (seed {seed}{', quick' if quick else ''})")
    probes: dict[str, float] = {}
    # With the knee, every compared policy is probed too (the served rate beside its own knee); the
    # capacity, which scales the knee ladder and the sweep, comes from the scenario's probe policies.
    own_knees = own_knees and capacity == "knee"
    probed = knee_policies(sc, policies) if own_knees else sc.probe_policies
    for pol in probed:
        probes[pol] = probe_capacity(sc, pol, seed, min(duration, 20.0))
        console.print(f"  capacity probe {pol:>18} at {sc.probe_qps:g} QPS offered: {probes[pol]:.1f} req/s")
    cap = max(probes[pol] for pol in sc.probe_policies)
    console.print(f"fleet capacity (best policy, served under overload): {cap:.1f} req/s")
    knee: dict[str, Any] = {}
    if capacity == "knee":
        p90_at, served, span = _p90_at(sc, seed, min(duration, 20.0)), cap, min(duration, 20.0)
        cap, knee = knee_capacity(sc, sc.probe_policies, seed, span, served, console, p90_at=p90_at)
        console.print(f"fleet capacity (knee, best policy): {cap:.1f} req/s")
        if own_knees:
            # Each compared policy's own knee on its own unloaded p90, bisected finer than the ladder
            # (the capacity above, which scales the sweep, is unchanged).
            knee["per_policy"] = knee_capacity(
                sc,
                probed,
                seed,
                span,
                served,
                console,
                refine=KNEE_REFINE,
                p90_at=p90_at,
                label="own knee",
                own_base=True,
            )[1]
    points = [round(cap * f, 2) for f in fractions]
    rows: list[dict[str, Any]] = []
    series: dict[str, report.LoadSeries] = {}
    # Per-replica load over time is plotted for the point nearest the key load fraction.
    key_qps = min(points, key=lambda q: abs(q - cap * sc.key_fraction))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} virtual s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as prog:
        span = sc.warmup + duration
        total = len(run_seeds) * len(pols) * len(points) * span
        task = prog.add_task("sweep", total=total)
        done = 0.0
        for run_seed in run_seeds:
            for qps in points:
                for pol in pols:
                    prog.update(task, description=f"{pol:>18} @ {qps:7.1f} QPS, seed {run_seed}")

                    def tick(t: float, base: float = done) -> None:
                        prog.update(task, completed=base + min(t, span))

                    res = run_point(sc, pol, qps, duration, run_seed, tick)
                    row = res.row | {"load_fraction": round(qps / cap, 3) if cap else None}
                    rows.append(row)
                    if qps == key_qps and run_seed == run_seeds[0]:
                        series[pol] = res.collector.load
                    done += span
                    prog.update(task, completed=done)
    wall = time.perf_counter() - wall0
    payload = {
        "scenario": sc.name,
        "title": sc.title,
        "how_scaled": sc.how_scaled,
        "seed": seed,
        "seeds": run_seeds,
        "quick": quick,
        "capacity_req_per_s": cap,
        "capacity_mode": capacity,
        "knee": knee,
        "probe": {"offered_qps": sc.probe_qps, "served_req_per_s": probes},
        "replicas": [{"profile": r.profile, "count": r.count, **r.overrides} for r in sc.replicas],
        "duration_virtual_s": duration,
        "wall_s": wall,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "rows": rows,
    }
    suffix = ("-quick" if quick else "") + ("-knee" if capacity == "knee" else "")
    summary_md = ""
    if seeds:
        span_ok = run_seeds == list(range(run_seeds[0], run_seeds[0] + len(run_seeds)))
        named = f"{run_seeds[0]}-{run_seeds[-1]}" if span_ok else "_".join(map(str, run_seeds))
        suffix += f"-seeds{named}"
        payload["summary"] = summary = report.seed_summary(rows)
        listed = ", ".join(map(str, run_seeds))
        summary_md = f"Over seeds {listed}:\n\n{report.seed_summary_table(summary)}\n\n"
    base = out / f"fleet-{sc.name}{suffix}"
    report.write_json(base.with_suffix(".json"), payload)
    cols = [("policy", "policy"), ("QPS", "qps"), ("load", "load_fraction")]
    table = report.markdown_table(rows, [("seed", "seed"), *cols] if seeds else cols)
    base.with_suffix(".md").write_text(
        f"# {sc.title}\n\n{sc.how_scaled}\n\nProbed capacity ({capacity}, seed {seed}): {cap:.1f} req/s. "
        f"Virtual seconds per point: {duration:g}. Wall time: {wall:.0f} s.\n\n"
        f"{_capacity_md(sc, probes, knee)}{summary_md}{table}\n"
    )
    written = [base.with_suffix(".json"), base.with_suffix(".md"), base.parent / f"{base.name}-ttft.png"]
    report.plot_ttft_vs_qps(written[-1], [r for r in rows if r["seed"] == run_seeds[0]], sc.title)
    if series:
        written.append(base.parent / f"{base.name}-load.png")
        report.plot_load(written[-1], series, f"{sc.title}: per-replica queue")
    print(summary_md + table)
    console.print(f"wall time {wall:.0f} s")
    wrote(*written)
    return payload
