"""Live side by side: the same simulated fleet behind each router, over real HTTP on 127.0.0.1.

Routers: ``kvgate serve`` with the kvgate, reference (2/2/3), round-robin and least-request policies,
the reference and kvgate default profiles with ``precise-prefix-cache-scorer`` (KV events) as their
prefix scorer (``bench/precise.py``'s ``reference-precise`` and ``kvgate-precise``), and the Rust peers
``sglang-router`` (cache_aware, round_robin) and ``vllm-router`` (cache_aware), installed and launched
through ``kvgate.bench.peers``. Every run gets a fresh fleet (the simulator's HTTP replicas, in one
subprocess) and a fresh router, so all start from cold caches; a warm-up is sent first and left out of
the figures. Runs are interleaved: every round visits the routers in a new shuffled order, and the
report takes the median over rounds. A peer that can't be installed or can't front the simulator is
recorded with the reason, not dropped.

Three modules: ``live_fleet`` (the simulated fleet, its scraping and the offered load), ``live_routers``
(the routers and their configs) and this one (one run, the interleaved comparison, the report and CLI);
the names of the first two are re-exported here.

Offered load. By default it is ``--load-fraction`` (0.8) of the fleet's *measured* capacity: the
virtual-clock fleet simulator (``kvgate.bench.fleetsim``) runs the identical fleet (profile, replica
count, KV blocks, max_num_seqs) and the identical workload generator through
``kvgate.bench.sweep.probe_capacity``, and, as in the fleet scenarios (``shared-prefix``), capacity is
the most req/s any prefix-aware policy (reference, kvgate, sglang-cache-aware) serves when offered
more than the fleet can take (``CAPACITY_PROBE_QPS``). It is deterministic per seed and takes ~10 s of
CPU. ``--qps`` overrides it with a fixed rate (simulated req/s).

Time scale (``--time-scale``, default ``DEFAULT_TIME_SCALE`` = 0.2). The fleet is time-scaled (< 1 slows
the simulated GPUs; latencies are reported in simulated seconds = wall x time scale, rates per simulated
second), so that one Python simulator process, the router and the load generator keep up on a 2-core
machine: the wall-clock arrival rate is ``fraction x capacity x time_scale`` (0.8 x 135.9 x 0.2 = 21.8
req/s with the defaults). Why 0.2, from short runs on the 2-core machine (2026-11-27):
- at low load (5 req/s, 10 s, kvgate default) the live run reproduces the virtual-clock model: TTFT
  p50/p90/p99 43/353/372 ms vs 50/346/355 ms, ITL p50 27.0 vs 27.0 ms;
- at 0.8 x capacity the simulator's mean step lag was 1-3 simulated ms per ~40 ms decode step at 0.2
  (kvgate default, reference, reference + precise) but 8 ms for reference + precise at 0.25 (that
  gateway tokenizes each 3k-token prompt: ~10 ms of CPU) and did not improve with 2 simulator
  processes (``--sim-procs 2``: same lag), so one process is the default;
- at 0.1 the lag halves again but a round would take ~15 minutes.
Every row records the measured-window lag (``sim_late_frac``, ``sim_lag_mean_ms``), and the markdown
flags rows whose simulator fell behind (``LAG_WARN_MS``): vllm-router's cache_aware policy, which
renders every prompt on every replica before each request, makes the simulator fall ~11 simulated ms
per step behind at this load.

Windows (``LiveLoad``, simulated seconds): 4 s warm-up (on the virtual clock a 3 s warm-up leaves the
cold-start queue in the measured window: reference p90 0.44 s vs 0.09 s steady) + 5 s measured, ~545
measured requests per router at 0.8 x capacity; a run takes ~50 s of wall time, a round over the 9
targets ~9-10 minutes. A router that cannot keep up (prefix-blind ones at this load: the queue grows
without bound) has its stragglers cut at ``request_timeout`` (6 simulated s = 3 x the TTFT SLO; ~30 s
more wall time per such run), counted as errors. ``--quick``: 3 s + 3 s.

KV events. Every replica publishes vLLM-style KV events (ZMQ PUB) on its HTTP port +
``KV_EVENTS_OFFSET`` and answers replay on + 2 x ``KV_EVENTS_OFFSET`` (``kvgate.bench.simproc``), for every
router, so all of them face the same fleet; the precise target finds them through the scorer's
``eventsPortOffset``/``replayPortOffset`` and tokenizes prompts with the simulator's own tokenizer
(``mode: tokens``: the simulator's engine publishes its own xxh64 block hashes, not vLLM's).

Everything runs inside a loopback-only network namespace (``unshare -n`` + ``ip link set lo up``)
unless ``--no-netns``: nothing can leave the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from kvgate import lifeline
from kvgate.bench import loadgen, procs, report
from kvgate.bench.live_fleet import CAPACITY_PROBE_DURATION as CAPACITY_PROBE_DURATION
from kvgate.bench.live_fleet import CAPACITY_PROBE_POLICIES as CAPACITY_PROBE_POLICIES
from kvgate.bench.live_fleet import CAPACITY_PROBE_QPS as CAPACITY_PROBE_QPS
from kvgate.bench.live_fleet import DEFAULT_LOAD_FRACTION as DEFAULT_LOAD_FRACTION
from kvgate.bench.live_fleet import DEFAULT_TIME_SCALE as DEFAULT_TIME_SCALE
from kvgate.bench.live_fleet import HITS as HITS
from kvgate.bench.live_fleet import KV as KV
from kvgate.bench.live_fleet import KV_EVENTS_OFFSET as KV_EVENTS_OFFSET
from kvgate.bench.live_fleet import MODEL as MODEL
from kvgate.bench.live_fleet import NETNS_ENV as NETNS_ENV
from kvgate.bench.live_fleet import QUERIES as QUERIES
from kvgate.bench.live_fleet import RUNNING as RUNNING
from kvgate.bench.live_fleet import WAITING as WAITING
from kvgate.bench.live_fleet import Capacity as Capacity
from kvgate.bench.live_fleet import FleetSpec as FleetSpec
from kvgate.bench.live_fleet import LiveLoad as LiveLoad
from kvgate.bench.live_fleet import LiveWorkload as LiveWorkload
from kvgate.bench.live_fleet import _split as _split
from kvgate.bench.live_fleet import lag_summary as lag_summary
from kvgate.bench.live_fleet import live_scenario as live_scenario
from kvgate.bench.live_fleet import measure_capacity as measure_capacity
from kvgate.bench.live_fleet import parse_prom as parse_prom
from kvgate.bench.live_fleet import scrape as scrape
from kvgate.bench.live_fleet import sim_cmd as sim_cmd
from kvgate.bench.live_fleet import sim_states as sim_states
from kvgate.bench.live_fleet import start_fleet as start_fleet
from kvgate.bench.live_fleet import start_sim as start_sim
from kvgate.bench.live_fleet import wall_qps as wall_qps
from kvgate.bench.live_routers import KVGATE_COST_PRECISE_PARAMS as KVGATE_COST_PRECISE_PARAMS
from kvgate.bench.live_routers import KVGATE_TARGETS as KVGATE_TARGETS
from kvgate.bench.live_routers import PEER_TARGETS as PEER_TARGETS
from kvgate.bench.live_routers import PICKER_CONFIGS as PICKER_CONFIGS
from kvgate.bench.live_routers import Target as Target
from kvgate.bench.live_routers import _with_precise as _with_precise
from kvgate.bench.live_routers import gateway_config as gateway_config
from kvgate.bench.live_routers import picker_config as picker_config
from kvgate.bench.live_routers import precise_scorer_params as precise_scorer_params
from kvgate.bench.live_routers import start_kvgate as start_kvgate
from kvgate.bench.live_routers import start_peer as start_peer
from kvgate.bench.outdir import add_out, wrote
from kvgate.bench.procs import Proc
from kvgate.entry import ArgumentParser, comma_list, positive_int, positive_number
from kvgate.k8s.tasks import wait_event

# ---- one run -------------------------------------------------------------------------------------


async def every(period_s: float, step: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """``step()`` every ``period_s`` until ``stop`` is set. Waits with ``wait_event``, not
    ``asyncio.wait_for(stop.wait(), ...)``: on Python 3.11 that returned, dropping a Ctrl-C's cancel
    landing as ``stop`` was set (CPython gh-86296)."""
    while not stop.is_set():
        await step()
        await wait_event(stop, period_s)


async def start_router(t: Target, urls: list[str], spec: FleetSpec) -> tuple[Proc, str]:
    if t.policy in PICKER_CONFIGS and spec.kv_events_offset <= 0:
        raise ValueError(f"{t.name} needs a fleet with KV events (FleetSpec.kv_events_offset > 0)")
    if t.kind == "kvgate":
        return await start_kvgate(t.policy, urls, kv_offset=spec.kv_events_offset)
    return await start_peer(t, urls)


async def run_target(
    t: Target,
    spec: FleetSpec,
    load: LiveWorkload,
    on_done: Callable[[loadgen.RequestResult], None] | None = None,
    round_no: int = 0,
) -> dict[str, Any]:
    """A fresh fleet (so every router starts from cold caches) and router, the workload through it.

    Returns one row in simulated time: requests sent during the warm-up are left out, and the
    replicas' prefix-cache and step-lag counters are read at the end of the warm-up and at the end.
    """
    ts = spec.time_scale
    sims, urls = await start_fleet(spec)
    router: Proc | None = None
    try:
        router, base = await start_router(t, urls, spec)
        total = load.warmup + load.duration
        specs, count = load.send_plan(ts)
        cut = load.cut_after()
        cfg = loadgen.RunConfig(
            base_url=base,
            qps=wall_qps(load, spec),
            concurrency=1024,
            max_requests=count,
            duration=total / ts,
            request_timeout=load.request_timeout / ts,
            seed=load.seed + round_no,
            cut_after=None if cut is None else cut / ts,
        )
        col = report.Collector(slo_ttft=load.slo_ttft)
        async with aiohttp.ClientSession() as session:
            before: list[dict[str, float]] = []
            lag_before: list[dict[str, Any]] = []
            stop = asyncio.Event()
            t0 = time.perf_counter()

            async def sampler() -> None:
                # Snapshot the counters when the warm-up ends, then sample per-replica load.
                await asyncio.sleep(load.warmup / ts)
                before.extend(await scrape(session, urls))
                lag_before.extend(await sim_states(session, urls))

                async def sample() -> None:
                    try:
                        st = await scrape(session, urls)
                        now = (time.perf_counter() - t0) * ts
                        col.load.add(now, [x[WAITING] for x in st], [x[KV] for x in st])
                    except (aiohttp.ClientError, TimeoutError):
                        pass

                await every(0.5, sample, stop)

            samp = asyncio.create_task(sampler())
            results = await loadgen.run(specs, cfg, on_done)
            stop.set()
            await samp
            after = await scrape(session, urls)
            lag_after = await sim_states(session, urls)
    finally:
        if router is not None:
            await router.stop()
        for sim in sims:
            await sim.stop()
    for r in results:
        if r.start * ts < load.warmup:
            continue
        col.add(
            start=r.start * ts,
            ok=r.ok,
            ttft=None if r.ttft is None else r.ttft * ts,
            e2e=None if r.e2e is None else r.e2e * ts,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            itl=(g * ts for g in r.itl),
            error=r.error,
        )
    hits = sum(a[HITS] - b[HITS] for a, b in zip(after, before, strict=True))
    queries = sum(a[QUERIES] - b[QUERIES] for a, b in zip(after, before, strict=True))
    extra = {"router": t.name, "policy": t.name, "qps": load.qps, "wall_qps": wall_qps(load, spec)}
    extra |= {"round": round_no, **lag_summary(lag_before, lag_after, ts)}
    return col.summary(hit_rate=hits / queries if queries else None, extra=extra)


# ---- the whole comparison ------------------------------------------------------------------------


def in_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def reexec_in_netns(argv: list[str], prefix: Sequence[str] | None = None) -> int:
    """Re-run this command (``prefix + argv``; default ``kvgate bench``) in a loopback-only netns."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        print("live: `unshare`/`ip` not found; rerun with --no-netns (no isolation)", file=sys.stderr)
        return 2
    head = list(prefix) if prefix is not None else procs.kvgate_cmd("bench")
    cmd = " ".join(shlex.quote(a) for a in [*head, *argv])
    inner = f"ip link set lo up && exec {cmd}"
    env = {**os.environ, NETNS_ENV: "1"}
    # (the re-executed bench, with its children, ends with this one: SIGTERM reaches its reaper)
    return subprocess.call(lifeline.die_with_parent_argv(["unshare", "-n", "sh", "-c", inner]), env=env)


async def compare(
    targets: list[Target],
    spec: FleetSpec,
    load: LiveLoad,
    repeats: int,
    console: Console,
) -> list[dict[str, Any]]:
    """Every target, ``repeats`` rounds, in a shuffled order per round (interleaved)."""
    rows: list[dict[str, Any]] = []
    rng = random.Random(load.seed)
    for rnd in range(repeats):
        order = [t for t in targets if t.skipped is None]
        rng.shuffle(order)
        for t in order:
            try:
                row = await run_target(t, spec, load, round_no=rnd)
            except Exception as e:  # a router that can't front the simulator is reported, not fatal
                t.skipped = f"{type(e).__name__}: {e!r}"[:400]
                console.print(f"[yellow]{t.name}: not run: {t.skipped}[/yellow]")
                continue
            rows.append(row)
            console.print(_run_line(rnd, t.name, row))
    return rows


def _run_line(rnd: int, name: str, row: dict[str, Any]) -> str:
    p90, hit, late = row["ttft_p90"], row["prefix_hit_rate"], row.get("sim_late_frac")
    return (
        f"  round {rnd}  {name:<28} TTFT p90 {'-' if p90 is None else f'{p90:.3f}'} s  "
        f"hit {'-' if hit is None else f'{hit:.0%}'}  out {row['output_tok_per_s']:.0f} tok/s  "
        f"requests {row['requests']}  errors {row['errors']}  "
        f"sim late steps {'-' if late is None else f'{late:.1%}'}"
    )


def median_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per router: the median over rounds of each numeric figure."""
    out: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["router"] for r in rows):
        mine = [r for r in rows if r["router"] == name]
        agg: dict[str, Any] = {"router": name, "policy": name, "rounds": len(mine)}
        for k, v in mine[0].items():
            if k in agg or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            vals = [r[k] for r in mine if isinstance(r.get(k), int | float)]
            agg[k] = statistics.median(vals) if vals else None
        out.append(agg)
    return out


def select_targets(targets: list[Target], names: Sequence[str] | None) -> list[Target]:
    """``--policies``: each name selects the targets with that policy, or else those of that router
    kind (``kvgate`` is both: it selects kvgate's default policy; ``sglang-router`` selects both of its
    targets); none = all."""
    if not names:
        return list(targets)
    policies = {t.policy for t in targets}
    chosen = {n for n in names if n in policies}
    kinds = {n for n in names if n not in policies}
    return [t for t in targets if t.policy in chosen or t.kind in kinds]


def live_policies(text: str) -> list[str]:
    """An argparse type for ``--policies``: each a target's policy or router kind (``select_targets``); an
    unknown one selected nothing and ran an empty table (review qa36c F5)."""
    known = dict.fromkeys(n for t in [*KVGATE_TARGETS, *PEER_TARGETS] for n in (t.policy, t.kind))
    return comma_list(str, list(known))(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The live-only options (``kvgate bench`` adds the shared ones: --quick, --qps, --duration...)."""
    p.add_argument(
        "--load-fraction",
        type=positive_number,
        help=f"live: offered load as a fraction of the measured capacity (default {DEFAULT_LOAD_FRACTION})",
    )
    p.add_argument(
        "--time-scale",
        type=positive_number,
        help=f"live: simulated GPU speed, < 1 slower than real time (default {DEFAULT_TIME_SCALE})",
    )
    p.add_argument(
        "--sim-procs", type=positive_int, help="live: simulator processes the replicas run in (default 1)"
    )


def plan_load(
    args: argparse.Namespace, spec: FleetSpec, console: Console
) -> tuple[LiveLoad, Capacity | None]:
    """The offered load: ``--qps`` as given, else ``--load-fraction`` x the measured capacity."""
    quick = bool(args.quick)
    load = LiveLoad(
        qps=0.0,
        duration=args.duration or (3.0 if quick else 5.0),
        warmup=3.0 if quick else 4.0,
        seed=args.seed,
    )
    if args.qps is not None:  # (> 0 at parse time: -5 was truthy and offered nothing, qa36c F7)
        load.qps = args.qps
        return load, None
    fraction = getattr(args, "load_fraction", None) or DEFAULT_LOAD_FRACTION
    t0 = time.process_time()
    cap = measure_capacity(spec, load, args.seed)
    probes = ", ".join(f"{p} {v:.1f}" for p, v in cap.probes.items())
    console.print(
        f"capacity (fleet simulator, offered {cap.probe_qps:g} req/s; {probes}): {cap.req_per_s:.1f} req/s "
        f"({time.process_time() - t0:.1f} s CPU)"
    )
    load.qps, load.load_fraction, load.capacity = round(fraction * cap.req_per_s, 2), fraction, cap.req_per_s
    return load, cap


def main_from_args(
    args: argparse.Namespace, policies: list[str] | None, reexec_prefix: Sequence[str] | None = None
) -> int:
    if not args.no_netns and not in_netns():
        if reexec_prefix is not None:  # python -m kvgate.bench.live ...
            return reexec_in_netns(sys.argv[1:], reexec_prefix)
        i = sys.argv.index("live") if "live" in sys.argv else -1
        return reexec_in_netns(sys.argv[i:] if i >= 0 else ["live"])
    spec = FleetSpec(
        kv_events_offset=KV_EVENTS_OFFSET,  # for every router, so all face the same fleet
        time_scale=getattr(args, "time_scale", None) or DEFAULT_TIME_SCALE,
        sim_procs=getattr(args, "sim_procs", None) or 1,
    )
    console = Console()
    load, cap = plan_load(args, spec, console)
    targets = select_targets([*KVGATE_TARGETS, *PEER_TARGETS], policies)
    frac = "" if load.load_fraction is None else f" = {load.load_fraction:g} x {load.capacity:.1f} capacity"
    console.print(
        f"[bold]live[/bold]: {spec.replicas} x {spec.profile} (time scale {spec.time_scale:g}, "
        f"{spec.sim_procs} sim process(es)), {load.num_groups} customers x {load.system_prompt_len}-token "
        f"prompts, {load.qps:g} req/s{frac} ({wall_qps(load, spec):.1f} req/s wall), "
        f"{load.warmup:g} s warm-up + {load.duration:g} s per run (simulated), {args.repeats} round(s); "
        f"netns: {in_netns()}"
    )
    t0 = time.perf_counter()
    rows = asyncio.run(compare(targets, spec, load, args.repeats, console))
    skipped = {t.name: t.skipped for t in targets if t.skipped}
    payload = build_payload(spec, load, cap, rows, args.repeats, skipped, time.perf_counter() - t0)
    base = Path(args.out) / ("live-shared-prefix-quick" if args.quick else "live-shared-prefix")
    report.write_json(base.with_suffix(".json"), payload)
    md = markdown(payload)
    base.with_suffix(".md").write_text(md)
    print(md)
    wrote(base.with_suffix(".json"), base.with_suffix(".md"))
    return 0


def build_payload(
    spec: FleetSpec,
    load: LiveLoad,
    cap: Capacity | None,
    rows: list[dict[str, Any]],
    repeats: int,
    not_run: Mapping[str, str | None],
    wall_s: float,
) -> dict[str, Any]:
    """The JSON document of a comparison: setup, measured capacity and offered load, rows, medians."""
    return {
        "scenario": "live-shared-prefix",
        "fleet": asdict(spec),
        "load": asdict(load),
        "capacity": None if cap is None else asdict(cap),
        "load_fraction": load.load_fraction,
        "offered_qps": load.qps,
        "offered_wall_qps": wall_qps(load, spec),
        "repeats": repeats,
        "netns": in_netns(),
        "wall_s": wall_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "not_run": dict(not_run),
        "rows": rows,
        "median": median_rows(rows),
    }


def load_line(payload: dict[str, Any]) -> str:
    """The offered load as the markdown states it: capacity, fraction, simulated and wall rates."""
    fleet, load = payload["fleet"], payload["load"]
    cap = payload.get("capacity")
    if cap is None:
        how = f"{payload['offered_qps']:g} req/s (fixed with --qps)"
    else:
        how = (
            f"{payload['offered_qps']:g} req/s = {payload['load_fraction']:g} x the fleet's capacity of "
            f"{cap['req_per_s']:.1f} req/s (measured on the fleet simulator: best of "
            f"{', '.join(f'{p} {v:.1f}' for p, v in cap['probes'].items())} "
            f"when offered {cap['probe_qps']:g})"
        )
    return (
        f"Offered load: {how}; {payload['offered_wall_qps']:.1f} req/s of wall time at time scale "
        f"{fleet['time_scale']:g}. Each run: {load['warmup']:g} s warm-up + {load['duration']:g} s measured "
        f"(simulated seconds); requests over {load['request_timeout']:g} s count as errors."
    )


LAG_COLUMNS = [("router", "router"), ("rounds", "rounds"), ("requests", "requests")]
# Mean simulator step lag (simulated ms) above which a row's figures say more about this machine's CPU
# than about the router: a decode step of the default fleet is ~40 simulated ms.
LAG_WARN_MS = 5.0


def markdown(payload: dict[str, Any]) -> str:
    med = payload["median"]
    table = report.markdown_table(med, LAG_COLUMNS)
    lag = "\n".join(
        f"- {r['router']}: {_pct(r.get('sim_late_frac'))} of steps late, mean lag "
        f"{_num(r.get('sim_lag_mean_ms'))} simulated ms{_lag_warning(r)}"
        for r in med
    )
    notes = "".join(f"\n- {k}: not run: {v}" for k, v in payload["not_run"].items())
    return (
        f"# Live side by side (simulated seconds)\n\n{load_line(payload)}\n\n{table}\n{notes}\n\n"
        f"Simulator lag over the measured windows (median over rounds):\n\n{lag}\n"
    )


def _lag_warning(row: dict[str, Any]) -> str:
    lag = row.get("sim_lag_mean_ms")
    if lag is None or lag <= LAG_WARN_MS:
        return ""
    return " **(the simulator fell behind: not a faithful figure for this router)**"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    """``python -m kvgate.bench.live``: the same run as ``kvgate bench live``, with every live option."""
    p = ArgumentParser(prog="python -m kvgate.bench.live", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter runs")
    p.add_argument("--seed", type=int, default=0)
    add_out(p, "live", "live-shared-prefix.json/.md")
    p.add_argument("--policies", type=live_policies, help="comma-separated policies or router kinds")
    p.add_argument(
        "--qps", type=positive_number, help="fixed offered QPS (simulated), instead of --load-fraction"
    )
    p.add_argument("--duration", type=positive_number, help="simulated seconds measured per run")
    p.add_argument("--repeats", type=positive_int, default=1, help="interleaved rounds")
    p.add_argument("--no-netns", action="store_true", help="don't re-exec inside `unshare -n`")
    add_arguments(p)
    args = p.parse_args(argv)
    return main_from_args(args, args.policies, reexec_prefix=[sys.executable, "-m", "kvgate.bench.live"])


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
