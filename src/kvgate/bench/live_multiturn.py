"""`kvgate bench multiturn --live`: the mixed multi-turn / burst / decode-heavy family (``bench.mixed``)
over real HTTP, with the real peer routers, side by side in the same run.

The fleet simulator's ``kvgate bench multiturn`` compares kvgate with a *model* of sglang-router's
cache_aware policy. This runs the same workload generator against real processes: the simulator's
HTTP replicas (``live_fleet``: one subprocess, the family's fleet: 4 x Qwen3-32B on H200 with the KV
cache cut to the family's size), and in front of them, one at a time, ``kvgate serve`` (default
profile, and round robin) and the Rust peers from PyPI (``sglang-router`` and ``vllm-router``, both
``cache_aware``: sglang's default and vllm-router's prefix-aware policy; its ``consistent_hash`` and
``sticky_least_loaded`` need a session key the clients here do not send). The client is the project's
load generator (``loadgen``, streaming SSE over aiohttp), sending every request at the send offset the
generator fixed (open loop: a session's next turn leaves a think time after its previous send,
whatever the router did), so every router sees the same requests at the same times.

Scaling to fit the 2-core machine (a run of 4 routers x 2 seeds in ~8 minutes):
- **Think times compressed** (``--think-scale``, default 0.25): each session's think time and turn gap
  are multiplied by it, so a session lives through its turns (and its context grows) within a window of
  tens of seconds instead of minutes. Lengths, the mix, bursts and the KV cache are the family's.
- **Short windows**: ``--warmup`` 10 + ``--duration`` 30 simulated seconds; sessions started in the
  warm-up carry their context into the measured window.
- **Cut at the end** (``--grace``, 8 simulated s after the last send): decode-heavy one-offs stream up
  to 1,600 tokens (tens of seconds); requests still streaming then are cut (``loadgen``'s
  ``cut_after``). One that streamed its first token counts as ok for TTFT (its E2E is a lower bound);
  one that did not counts as an error.
- **Time scale** 1.0 by default (simulated seconds = wall seconds): the arrival rate is low (~12-14
  req/s) but prompts are long and one-offs decode for long; every row records how late the simulator
  ran its engine steps, and rows whose mean lag exceeds ``live.LAG_WARN_MS`` are flagged.

Offered load: ``--load`` (0.8) x a capacity per family: the **knee** (the highest load whose p90 TTFT
stays within 2x the unloaded p90, best of kvgate and the sglang-cache-aware model) of this very
workload (compressed think times, same fleet) on the virtual-clock fleet simulator, as
``kvgate bench multiturn`` defines it for the uncompressed family. The search takes minutes of CPU,
so the default is its result (``COMPRESSED_KNEE_CAPACITIES``, deterministic, from ``--capacity knee
--capacity-only``); ``--capacity knee`` searches it again first, ``--capacities a=..,b=..`` gives
others, ``--qps`` fixes the rate. It is the fleet simulator's capacity, not one measured live.

Runs: ``--runs a:1,b:101`` (default): family ``a`` seed 1 is from the **tuning set**, ``b`` seed 101
from the **validation set** (``bench.mixed``: families b and c, seeds 101-103, never used for tuning).
Each (run, router) gets a fresh fleet and a fresh router; routers go in a shuffled order per run.
Figures: TTFT p50/p90/p99 (simulated seconds), the replicas' own prefix-cache hit rate over the
measured window, errors, cut requests, per-class TTFT p90 and hit rate (session turns, burst requests,
one-offs; hit rates from ``usage.prompt_tokens_details.cached_tokens`` of the completed requests), and
p50/p90 ratios to sglang-router cache_aware's in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from rich.console import Console

from kvgate.bench import live, loadgen, report
from kvgate.bench.argtypes import family_capacities
from kvgate.bench.live_fleet import KV_EVENTS_OFFSET, MODEL, FleetSpec
from kvgate.bench.live_routers import KVGATE_TARGETS, PEER_TARGETS, Target
from kvgate.bench.mixed import FAMILIES, TUNING_SEEDS, Family, mixed_workload
from kvgate.bench.outdir import add_out, wrote
from kvgate.bench.workloads import RequestSpec
from kvgate.entry import ArgumentParser, nonneg_number, positive_number

# kvgate default, round robin (kvgate serve), sglang-router and vllm-router cache_aware.
DEFAULT_POLICIES = ("kvgate", "round-robin", "cache_aware")
REFERENCE_ROUTER = "sglang-router cache_aware"  # ratios are to this row of the same run
DEFAULT_RUNS = (("a", 1), ("b", 101))  # one tuning-set run, one validation-set run
DEFAULT_THINK_SCALE = 0.25
# Knee capacities (req/s) of the workload at the default think scale, on the fleet simulator (same
# fleet, same generator, seeds a:1, b:101, c:101; best of kvgate and sglang-cache-aware; deterministic):
# `kvgate bench multiturn --live --capacity knee --capacity-only --runs a:1,b:101,c:101`, 2026-12-03.
COMPRESSED_KNEE_CAPACITIES = {"a": 14.68, "b": 17.30}
COMPRESSED_KNEE_HOW = (
    "the knee of this workload (think x 0.25) on the fleet simulator, measured with "
    "`kvgate bench multiturn --live --capacity knee --capacity-only` (COMPRESSED_KNEE_CAPACITIES)"
)
DEFAULT_TIME_SCALE = 1.0
DEFAULT_WARMUP = 10.0
DEFAULT_DURATION = 30.0
DEFAULT_GRACE = 8.0
# Knee search on the fleet simulator (--capacity knee): longer windows than the live runs, which are
# too short for a stable knee.
KNEE_DURATION, KNEE_WARMUP = 120.0, 30.0


def compressed(fam: Family, think_scale: float) -> Family:
    """``fam`` with every session's think time and turn gap multiplied by ``think_scale``."""
    return dataclasses.replace(fam, think_s=fam.think_s * think_scale, turn_gap=fam.turn_gap * think_scale)


def request_class(group: str) -> str:
    """``mixed_workload``'s groups: ``s<n>`` session turns, ``t<n>`` burst tenants, ``oneoff``."""
    if group == "oneoff":
        return "oneoff"
    return "session" if group.startswith("s") else "burst"


def set_of(family: str, seed: int) -> str:
    return "tuning" if family == "a" and seed in TUNING_SEEDS else "validation"


@dataclass(slots=True)
class MixedLiveLoad:
    """One family and seed of the mixed workload, in simulated seconds (a ``live_fleet.LiveWorkload``)."""

    family: str
    seed: int
    qps: float  # offered, per simulated second (every class's rate scales with it)
    duration: float = DEFAULT_DURATION
    warmup: float = DEFAULT_WARMUP
    think_scale: float = DEFAULT_THINK_SCALE
    grace: float = DEFAULT_GRACE  # after the last send, before requests still streaming are cut
    slo_ttft: float = 2.0
    # A whole request (decode-heavy ones stream for tens of seconds); the cut comes first in practice.
    request_timeout: float = 300.0
    load_fraction: float | None = None
    capacity: float | None = None

    def fam(self) -> Family:
        return compressed(FAMILIES[self.family], self.think_scale)

    def specs(self) -> list[RequestSpec]:
        """Every request of the run, in send order, ``at`` in simulated seconds."""
        return list(
            mixed_workload(
                self.fam(), qps=self.qps, horizon=self.warmup + self.duration, seed=self.seed, model=MODEL
            )
        )

    def send_plan(self, time_scale: float) -> tuple[list[RequestSpec], int]:
        wall = [dataclasses.replace(s, at=(s.at or 0.0) / time_scale) for s in self.specs()]
        return wall, len(wall)

    def cut_after(self) -> float | None:
        return self.warmup + self.duration + self.grace


def fleet_spec(family: str, time_scale: float) -> FleetSpec:
    fam = FAMILIES[family]
    return FleetSpec(
        replicas=fam.replicas,
        profile=fam.profile,
        time_scale=time_scale,
        num_gpu_blocks=fam.kv_blocks,
        kv_events_offset=KV_EVENTS_OFFSET,  # as `kvgate bench live`: a fleet that publishes KV events
    )


def class_figures(results: Sequence[loadgen.RequestResult], warmup_wall: float, ts: float) -> dict[str, Any]:
    """Per-class TTFT p90 (simulated s) and client-side hit rate over the measured requests, and
    how many were cut at the end."""
    ttft: dict[str, list[float]] = {}
    hits: dict[str, list[int]] = {}
    out: dict[str, Any] = {"cut": 0}
    for r in results:
        if r.start < warmup_wall:
            continue
        out["cut"] += r.cut
        cls = request_class(r.group)
        if r.ok and r.ttft is not None:
            ttft.setdefault(cls, []).append(r.ttft * ts)
        if r.ok and not r.cut and r.cached_tokens is not None and r.prompt_tokens:
            h = hits.setdefault(cls, [0, 0])
            h[0] += r.cached_tokens
            h[1] += r.prompt_tokens
    for cls in ("session", "burst", "oneoff"):
        out[f"{cls}_ttft_p90"] = report.pct(ttft.get(cls, []), 90)
        cached, prompt = hits.get(cls, (0, 0))
        out[f"{cls}_hit"] = cached / prompt if prompt else None
    return out


# The simulator's completion ids: ``cmpl-<replica index>-<pid>-<hex>-<n>`` (``kvgate.sim.server``).
_SIM_ID = re.compile(r"(?:chat)?cmpl-(\d+)-")


def session_moves(results: Sequence[loadgen.RequestResult], warmup_wall: float) -> dict[str, Any]:
    """Measured session turns whose replica (read from the simulator's response id, which the routers
    pass through) differs from the session's previous turn: each such move recomputes the context."""
    holder: dict[str, str] = {}
    turns = moves = 0
    for r in sorted(results, key=lambda r: r.start):
        if request_class(r.group) != "session" or r.response_id is None:
            continue
        m = _SIM_ID.match(r.response_id)
        if m is None:
            continue
        prev, holder[r.group] = holder.get(r.group), m.group(1)
        if r.start >= warmup_wall:
            turns += 1
            moves += prev is not None and prev != m.group(1)
    return {"session_turns": turns, "session_moves": moves if turns else None}


async def run_one(t: Target, spec: FleetSpec, load: MixedLiveLoad) -> dict[str, Any]:
    results: list[loadgen.RequestResult] = []
    row = await live.run_target(t, spec, load, on_done=results.append)
    row.update(class_figures(results, load.warmup / spec.time_scale, spec.time_scale))
    row.update(session_moves(results, load.warmup / spec.time_scale))
    row.update(family=load.family, seed=load.seed, set=set_of(load.family, load.seed))
    return row


async def compare(
    targets: list[Target], runs: Sequence[tuple[MixedLiveLoad, FleetSpec]], console: Console
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for load, spec in runs:
        order = [t for t in targets if t.skipped is None]
        random.Random(load.seed).shuffle(order)
        for t in order:
            try:
                row = await run_one(t, spec, load)
            except Exception as e:  # a router that can't front the simulator is reported, not fatal
                t.skipped = f"{type(e).__name__}: {e!r}"[:400]
                console.print(f"[yellow]{t.name}: not run: {t.skipped}[/yellow]")
                continue
            rows.append(row)
            console.print(_run_line(row))
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``p50_vs_sglang`` / ``p90_vs_sglang``: TTFT over sglang-router cache_aware's in the same run."""
    for r in rows:
        ref = next(
            (
                x
                for x in rows
                if x["router"] == REFERENCE_ROUTER and (x["family"], x["seed"]) == (r["family"], r["seed"])
            ),
            None,
        )
        for q in (50, 90):
            a, b = r.get(f"ttft_p{q}"), None if ref is None else ref.get(f"ttft_p{q}")
            r[f"p{q}_vs_sglang"] = a / b if a is not None and b else None


def _run_line(r: dict[str, Any]) -> str:
    f = report._fmt
    return (
        f"  {r['set']} {r['family']}/{r['seed']}  {r['router']:<26} TTFT p50 {f(r['ttft_p50'], digits=3)} s "
        f"p90 {f(r['ttft_p90'], digits=3)} s  hit {f(r['prefix_hit_rate'], digits=3)}  "
        f"requests {r['requests']}  errors {r['errors']}  cut {r['cut']}  "
        f"sim lag {f(r.get('sim_lag_mean_ms'))} ms"
    )


def plan_capacities(
    args: argparse.Namespace, families: set[str], console: Console
) -> dict[str, dict[str, Any]]:
    """Capacity per family (req/s): searched on the fleet simulator (``--capacity knee``), else given
    (``--capacities``, else ``COMPRESSED_KNEE_CAPACITIES`` at the default think scale)."""
    given: dict[str, float] = {}
    how = "given with --capacities"
    if args.think_scale == DEFAULT_THINK_SCALE:
        given, how = dict(COMPRESSED_KNEE_CAPACITIES), COMPRESSED_KNEE_HOW
    given.update(args.capacities or {})
    caps: dict[str, dict[str, Any]] = {}
    for fam in sorted(families):
        if args.capacity == "knee":
            from kvgate.bench.multiturn import capacity

            seed = next(s for f, s in args.run_list if f == fam)
            t0 = time.process_time()
            c = capacity(
                compressed(FAMILIES[fam], args.think_scale), seed, ["kvgate", "sglang-cache-aware"], "knee",
                KNEE_DURATION, KNEE_WARMUP, lambda m: console.print(m),
            )  # fmt: skip
            c["how"] = (
                f"knee of this workload (think x {args.think_scale:g}) on the fleet simulator, searched in "
                f"this run with seed {seed}, {KNEE_DURATION:g}+{KNEE_WARMUP:g} virtual s per point "
                f"({time.process_time() - t0:.0f} s CPU)"
            )
            caps[fam] = c
        elif fam in given:
            given_here = args.capacities and fam in args.capacities
            caps[fam] = {"mode": "given", "capacity": given[fam], "how": how if not given_here else ""}
            caps[fam]["how"] = caps[fam]["how"] or "given with --capacities"
        else:
            raise SystemExit(f"no capacity for family {fam}: pass --capacities, --capacity knee or --qps")
    return caps


def parse_runs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        fam, _, seed = item.strip().partition(":")
        if fam not in FAMILIES or not seed:
            raise SystemExit(f"--runs: {item!r} is not FAMILY:SEED with FAMILY in {', '.join(FAMILIES)}")
        out.append((fam, int(seed)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="kvgate bench multiturn --live", description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=",".join(f"{f}:{s}" for f, s in DEFAULT_RUNS), help="FAMILY:SEED,...")
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help="kvgate policies or router kinds")
    p.add_argument("--load", type=positive_number, default=0.8, help="fraction of capacity to offer")
    p.add_argument(
        "--capacity",
        choices=["given", "knee"],
        default="given",
        help="given: --capacities or the table of fleet-simulator knees; knee: search it first (minutes)",
    )
    p.add_argument("--capacities", type=family_capacities, help="req/s per family, e.g. a=14.68,b=17.3")
    p.add_argument("--capacity-only", action="store_true", help="print the capacities and stop")
    p.add_argument("--qps", type=positive_number, help="fixed offered req/s (simulated) for every run")
    p.add_argument("--think-scale", type=positive_number, default=DEFAULT_THINK_SCALE)
    p.add_argument("--time-scale", type=positive_number, default=DEFAULT_TIME_SCALE)
    p.add_argument("--warmup", type=nonneg_number, default=DEFAULT_WARMUP)
    p.add_argument("--duration", type=positive_number, default=DEFAULT_DURATION)
    p.add_argument("--grace", type=nonneg_number, default=DEFAULT_GRACE)
    add_out(p, "multiturn", "live-multiturn.json/.md")
    p.add_argument("--no-netns", action="store_true", help="don't re-exec inside `unshare -n`")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.run_list = parse_runs(args.runs)
    console = Console()
    if args.capacity_only:  # the fleet simulator only: no processes, no network
        caps = plan_capacities(args, {f for f, _ in args.run_list}, console)
        print(orjson.dumps(caps, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not args.no_netns and not live.in_netns():
        return live.reexec_in_netns(["multiturn", "--live", *argv])
    caps = {} if args.qps else plan_capacities(args, {f for f, _ in args.run_list}, console)
    runs: list[tuple[MixedLiveLoad, FleetSpec]] = []
    for fam, seed in args.run_list:
        qps = args.qps or round(args.load * caps[fam]["capacity"], 2)
        load = MixedLiveLoad(
            fam, seed, qps, duration=args.duration, warmup=args.warmup, think_scale=args.think_scale,
            grace=args.grace, load_fraction=None if args.qps else args.load,
            capacity=None if args.qps else caps[fam]["capacity"],
        )  # fmt: skip
        runs.append((load, fleet_spec(fam, args.time_scale)))
    targets = live.select_targets([*KVGATE_TARGETS, *PEER_TARGETS], args.policies.split(","))
    targets = [dataclasses.replace(t) for t in targets]  # `skipped` is per invocation
    for load, spec in runs:
        console.print(
            f"[bold]multiturn --live[/bold] {set_of(load.family, load.seed)} {load.family}/{load.seed}: "
            f"{spec.replicas} x {spec.profile}, {spec.num_gpu_blocks} KV blocks, {load.qps:g} req/s "
            f"(think x {load.think_scale:g}), time scale {spec.time_scale:g}, "
            f"{load.warmup:g}+{load.duration:g} s "
            f"(+{load.grace:g} s grace), {len(load.specs())} requests; netns {live.in_netns()}"
        )
    t0 = time.perf_counter()
    rows = asyncio.run(compare(targets, runs, console))
    payload = {
        "benchmark": "live-multiturn",
        "runs": [{"load": asdict(load), "fleet": asdict(spec)} for load, spec in runs],
        "capacity": caps,
        "reference_router": REFERENCE_ROUTER,
        "netns": live.in_netns(),
        "wall_s": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "not_run": {t.name: t.skipped for t in targets if t.skipped},
        "rows": rows,
    }
    base = args.out / "live-multiturn"
    report.write_json(base.with_suffix(".json"), payload)
    md = markdown(payload)
    base.with_suffix(".md").write_text(md)
    print(md)
    wrote(base.with_suffix(".json"), base.with_suffix(".md"))
    return 0


def markdown(payload: dict[str, Any]) -> str:
    f = report._fmt
    out = ["# Mixed multi-turn / burst / decode-heavy family, live side by side (simulated seconds)", ""]
    for run in payload["runs"]:
        load, fleet = run["load"], run["fleet"]
        cap = payload["capacity"].get(load["family"])
        offered = f"{load['qps']:g} req/s"
        if cap is not None and load["load_fraction"] is not None:
            offered += f" = {load['load_fraction']:g} x {cap['capacity']:g} req/s ({cap['how']})"
        out += [
            f"## {set_of(load['family'], load['seed'])} set: family {load['family']}, seed {load['seed']}",
            "",
            f"{fleet['replicas']} x {fleet['profile']} with {fleet['num_gpu_blocks']} KV blocks each, "
            f"time scale {fleet['time_scale']:g}; think times x {load['think_scale']:g}; offered {offered}; "
            f"{load['warmup']:g} s warm-up + {load['duration']:g} s measured, requests still streaming "
            f"{load['grace']:g} s after the last send are cut.",
            "",
            "| router | requests | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | p50 vs sglang | p90 vs sglang "
            "| hit rate | errors | cut | session p90 ms | session hit | session moves "
            "| burst p90 ms | burst hit | one-off p90 ms | sim lag ms (late steps) |",
            "|" + "---|" * 17,
        ]
        for r in payload["rows"]:
            if (r["family"], r["seed"]) != (load["family"], load["seed"]):
                continue
            lag = r.get("sim_lag_mean_ms")
            warn = " **lagging**" if lag is not None and lag > live.LAG_WARN_MS else ""
            out.append(
                f"| {r['router']} | {r['requests']} | {f(r['ttft_p50'], 1000, 0)} "
                f"| {f(r['ttft_p90'], 1000, 0)} "
                f"| {f(r['ttft_p99'], 1000, 0)} | {f(r['p50_vs_sglang'])} | {f(r['p90_vs_sglang'])} "
                f"| {f(r['prefix_hit_rate'], digits=3)} | {r['errors']} | {r['cut']} "
                f"| {f(r['session_ttft_p90'], 1000, 0)} | {f(r['session_hit'], digits=3)} "
                f"| {f(r.get('session_moves'))} / {r.get('session_turns', 0)} "
                f"| {f(r['burst_ttft_p90'], 1000, 0)} | {f(r['burst_hit'], digits=3)} "
                f"| {f(r['oneoff_ttft_p90'], 1000, 0)} "
                f"| {f(lag)} ({f(r.get('sim_late_frac'), 100, 0)}%){warn} |"
            )
        out.append("")
    for name, why in payload["not_run"].items():
        out.append(f"- {name}: not run: {why}")
    out.append(
        f"\nWall time: {payload['wall_s']:.0f} s; {payload['machine']}; "
        f"loopback-only netns: {payload['netns']}."
    )
    return "\n".join(out) + "\n"
