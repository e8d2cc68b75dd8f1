"""`kvgate bench flowcontrol --live`: the flow-control benchmark over real processes.

The same workload, arms and report as the virtual-clock run (``kvgate.bench.flowcontrol_bench``), but
through a real ``kvgate serve`` (one per arm and mix, fresh) in front of a simulated fleet (``kvgate sim``
replicas in a subprocess, ``kvgate.bench.simproc``), driven over HTTP by the load generator:

- tenants are ``x-gateway-inference-fairness-id``; the critical (priority 10) and sheddable batch
  (priority -1) bands are InferenceObjectives in the gateway config, chosen per request with
  ``x-gateway-inference-objective``; each request carries its TTFT SLO as ``x-slo-ttft-ms``;
- the simulated fleet runs at ``--time-scale`` (< 1: slower than real time, so a loaded machine keeps
  up); every time the gateway sees (SLO header, request TTL) is converted to wall time, and every time
  reported is converted back to simulated seconds;
- the offered load is ``--load`` x the fleet's capacity measured on the virtual clock (the same probe as
  the simulator run), unless ``--base-rate`` fixes it;
- each run records how far the simulator fell behind its own step deadlines (``/sim/state``): on a
  loaded machine that lag, not the gateway, can dominate TTFT, and the table flags such runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from typing import Any

import aiohttp
import yaml

from kvgate.bench import flowcontrol_bench as fc
from kvgate.bench import loadgen, procs
from kvgate.bench.live_fleet import FleetSpec, lag_summary, sim_states, start_fleet
from kvgate.bench.outdir import wrote
from kvgate.bench.report import write_json
from kvgate.bench.workloads import RequestSpec
from kvgate.entry import positive_number

OBJECTIVE_HEADER = "x-gateway-inference-objective"
TIMING_HEADER = "x-kvgate-timing"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
# Mean simulator step lag (simulated ms) above which a run's TTFTs say more about this machine's CPU
# than about the gateway (as ``kvgate bench live``'s LAG_WARN_MS).
LAG_WARN_MS = 5.0
MIXES = ("calm", "even", "flood")


def gateway_config(
    arm: str,
    urls: list[str],
    ttl_wall: float,
    max_num_seqs: int,
    headroom: float = 0.25,
    headroom_on: str = "saturation",
    ttft_target_wall: float = 0.0,
    slo_first: bool = False,
    running_reserve: bool = False,
    free_slot_pick: bool = False,
    ttft_confidence: float | None = None,
    pack_misses: bool = False,
    prefill_alone: bool = False,
) -> dict[str, Any]:
    """A ``kvgate serve --config`` document: the simulator bench's picker config for ``arm`` (TTL and
    TTFT target in wall seconds, the concurrency detector sized to the servers' batch), plus the two
    objectives."""
    picker = fc.arm_config(
        arm, ttl_wall, headroom=headroom, headroom_on=headroom_on, max_concurrency=max_num_seqs,
        ttft_target=ttft_target_wall, slo_first=slo_first, running_reserve=running_reserve,
        free_slot_pick=free_slot_pick, ttft_confidence=ttft_confidence, pack_misses=pack_misses,
        prefill_alone=prefill_alone,
    )  # fmt: skip
    return {
        "pools": [{"name": "default", "endpoints": list(urls), "models": [fc.MODEL],
                   "endpointPickerConfig": picker}],
        "objectives": [{"name": fc.CRITICAL, "priority": fc.PRIORITY[fc.CRITICAL]},
                       {"name": fc.BATCH, "priority": fc.PRIORITY[fc.BATCH]}],
    }  # fmt: skip


def specs(arrivals: list[fc.Arrival], time_scale: float, timing: bool = False) -> list[RequestSpec]:
    """The arrivals as requests at wall offsets; a distinct first token each (no shared prefix, as in
    the simulator run), SLO headers in wall milliseconds; ``timing``: each asks kvgate for its
    ``x-kvgate-timing`` marks (``trace``)."""
    out = []
    for n, a in enumerate(arrivals):
        headers = {
            FAIRNESS_HEADER: a.tenant,
            "x-slo-ttft-ms": str(int(fc._slo(a.tenant) * 1000 / time_scale)),
        }
        if timing:
            headers[TIMING_HEADER] = "1"
        if a.tenant in fc.PRIORITY:
            headers[OBJECTIVE_HEADER] = a.tenant
        ids = [1 + n % 17000, *([7] * (a.prompt - 1))]
        out.append(
            RequestSpec(ids, a.output, model=fc.MODEL, group=a.tenant, at=a.at / time_scale, headers=headers)
        )
    return out


async def start_gateway(
    doc: dict[str, Any], wait_s: float = 60.0, workers: int = 1
) -> tuple[procs.Proc, str]:
    """``kvgate serve`` on ``doc``, with ``--workers`` when ``workers`` > 1 (each worker its own flow
    controller, the in-flight counts per endpoint shared)."""
    fd, path = tempfile.mkstemp(prefix="kvgate-flowlive-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f)
    cmd = procs.kvgate_cmd(
        "serve", "--config", path, "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING",
        *(("--workers", str(workers)) if workers > 1 else ()),
    )  # fmt: skip
    try:
        proc, m = await procs.start("kvgate serve", cmd, r"listening on (http://[\d.]+:\d+)", wait_s=wait_s)
    finally:
        os.unlink(path)  # read at start-up only
    return proc, m[0].group(1)


async def run_arm(
    arm: str,
    arrivals: list[fc.Arrival],
    spec: FleetSpec,
    duration: float,
    ttl: float,
    headroom: float = 0.25,
    headroom_on: str = "saturation",
    ttft_target: float = 0.0,
    slo_first: bool = False,
    running_reserve: bool = False,
    free_slot_pick: bool = False,
    ttft_confidence: float | None = None,
    workers: int = 1,
    timing: bool = False,
    pack_misses: bool = False,
    prefill_alone: bool = False,
) -> tuple[fc.Run, dict[str, Any]]:
    """A fresh fleet and gateway, the arrivals through it; outcomes in simulated seconds."""
    ts = spec.time_scale
    sims, urls = await start_fleet(spec)
    gw: procs.Proc | None = None
    try:
        doc = gateway_config(
            arm, urls, ttl / ts, spec.max_num_seqs, headroom, headroom_on, ttft_target / ts, slo_first,
            running_reserve, free_slot_pick, ttft_confidence, pack_misses, prefill_alone,
        )  # fmt: skip
        gw, base = await start_gateway(doc, workers=workers)
        reqs = specs(arrivals, ts, timing)
        cfg = loadgen.RunConfig(
            base_url=base, qps=1.0, concurrency=4096, max_requests=len(reqs), duration=duration / ts + 1,
            request_timeout=(ttl + 60.0) / ts,
        )  # fmt: skip
        async with aiohttp.ClientSession() as session:
            before = await sim_states(session, urls)
            t0 = time.perf_counter()
            results = await loadgen.run(reqs, cfg)
            wall = time.perf_counter() - t0
            after = await sim_states(session, urls)
    finally:
        if gw is not None:
            await gw.stop()
        for s in sims:
            await s.stop()
    run = fc.Run(arm, duration=duration)
    errors = 0
    for r in results:
        shed = r.status in (429, 503)
        errors += not r.ok and not shed
        run.outcomes.append(fc.Outcome(
            r.group, r.start * ts, None if r.ttft is None else r.ttft * ts, r.status if shed else 0,
            r.completion_tokens,
        ))  # fmt: skip
    extra: dict[str, Any] = {"errors": errors, "wall_s": wall, **lag_summary(before, after, ts)}
    if timing:
        extra["trace"] = trace(results, ts)
        extra["trace_not_answered"] = not_answered(results, ts)
    return run, extra


def trace(results: list[loadgen.RequestResult], ts: float) -> list[list[Any]]:
    """Per quiet request answered: [tenant, start, TTFT, wait in kvgate (arrival to its pick), from the pick
    to the first byte (the server's queue and prefill, and the relay), the replica], simulated seconds."""
    out: list[list[Any]] = []
    for r in results:
        if r.group not in fc.QUIET or r.ttft is None or not r.timing:
            continue
        marks = dict(kv.split("=", 1) for kv in r.timing.split(","))
        try:
            recv, picked, first = float(marks["recv"]), float(marks["picked"]), float(marks["first"])
        except (KeyError, ValueError):
            continue
        replica = (r.response_id or "").rsplit("-", 1)[0]
        out.append([r.group, round(r.start * ts, 4), round(r.ttft * ts, 4), round((picked - recv) * ts, 4),
                    round((first - picked) * ts, 4), replica])  # fmt: skip
    return out


def not_answered(results: list[loadgen.RequestResult], ts: float) -> list[list[Any]]:
    """Per request of any tenant without a first token: [tenant, start (simulated seconds), why]. ``why`` is
    ``shed 429`` / ``shed 503`` (a refusal: in no TTFT percentile) or ``unanswered: <cause>`` (the client's
    timeout, the run's cut, another status, a connection error: ``flowcontrol_bench.unanswered``, which the
    bench reads as later than every answer). The answered ones are in ``trace``; with these, a reader of the
    JSON (``scripts/fc_live_ratio_interval.py --goal``) applies the bench's reading request by request."""
    out: list[list[Any]] = []
    for r in results:
        if r.ttft is not None:
            continue
        if r.status in (429, 503):
            why = f"shed {r.status}"
        else:  # (the error's kind: "http 500", "cut", "TimeoutError", "no tokens streamed")
            why = "unanswered: " + ((r.error or f"status {r.status}").split(":", 1)[0])[:40]
        out.append([r.group, round(r.start * ts, 4), why])
    return out


def trace_summary(rows: list[list[Any]], measured_from: float) -> dict[str, Any]:
    """Where the quiet requests' TTFT went: over all measured, and over those at or above their p90."""
    kept = [r for r in rows if r[1] >= measured_from]
    if not kept:
        return {}
    ttfts = sorted(r[2] for r in kept)
    p90 = ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))]
    slow = [r for r in kept if r[2] >= p90]

    def part(rs: list[list[Any]]) -> dict[str, Any]:
        n = len(rs)
        epp = sorted(r[3] for r in rs)
        srv = sorted(r[4] for r in rs)
        return {
            "n": n, "ttft_mean": sum(r[2] for r in rs) / n,
            "epp_mean": sum(epp) / n, "epp_p90": epp[min(n - 1, int(0.9 * n))],
            "server_mean": sum(srv) / n, "server_p90": srv[min(n - 1, int(0.9 * n))],
            "epp_over_1ms": sum(1 for v in epp if v > 0.001) / n,
        }  # fmt: skip

    return {"p90_ttft": p90, "all": part(kept), "slowest_tenth": part(slow)}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    mix = fc.Mix(1.0, "flood", args.duration)
    if args.base_rate:
        cap, base = None, args.base_rate
    else:
        cap = fc.capacity(args.replicas, args.profile, args.seed, mix.prompt, mix.output, args.max_num_seqs)
        weight = 4 + 1 + 10 + (mix.batch_prompt + mix.batch_output) / (mix.prompt + mix.output)
        base = args.load * cap / weight
    spec = FleetSpec(replicas=args.replicas, profile=args.profile, time_scale=args.time_scale,
                     max_num_seqs=args.max_num_seqs)  # fmt: skip
    rows: dict[str, Any] = {"capacity_rps": cap, "base_rate_rps": base, "load": args.load if cap else None,
                            "time_scale": args.time_scale, "replicas": args.replicas, "profile": args.profile,
                            "max_num_seqs": args.max_num_seqs, "workers": args.workers,
                            "runs": {}}  # fmt: skip
    arms = args.arms.split(",")
    for mode in args.mixes.split(","):
        arrivals = fc.Mix(base, mode, args.duration).arrivals(random.Random(args.seed))
        for arm in arms:
            run, extra = await run_arm(
                arm, arrivals, spec, args.duration, args.ttl,
                args.headroom, args.headroom_on, args.ttft_target, args.slo_first, args.running_reserve,
                args.free_slot_pick, args.ttft_confidence, args.workers, args.timing,
                getattr(args, "pack_misses", False), getattr(args, "prefill_alone", False),
            )  # fmt: skip
            if "trace" in extra:
                extra["trace_summary"] = trace_summary(extra["trace"], args.warmup)
            rows["runs"][f"{arm}/{mode}"] = {**fc.summarize(run, args.warmup), **extra}
    for arm in arms:
        flood = rows["runs"].get(f"{arm}/flood")
        if flood is None:
            continue
        for mode in ("calm", "even"):
            other = rows["runs"].get(f"{arm}/{mode}")
            f, c = flood["quiet"]["p90_ttft_s"], other and other["quiet"]["p90_ttft_s"]
            flood[f"quiet_p90_vs_{mode}"] = fc.p90_ratio(f, c)
    return rows


def render(rows: dict[str, Any]) -> str:
    head = (
        f"live: {rows['replicas']} x {rows['profile']} (max-num-seqs {rows['max_num_seqs']}) at time scale "
        f"{rows['time_scale']}, gateway --workers {rows.get('workers', 1)}; quiet tenant base rate "
        f"{rows['base_rate_rps']:.2f} req/s (simulated)"
    )
    if rows["capacity_rps"]:
        head += f"; capacity {rows['capacity_rps']:.1f} req/s, load {rows['load']:.0%} (flooded mix)"
    table = fc.render({**rows, "capacity_rps": rows["capacity_rps"] or 0.0, "load": rows["load"] or 0.0})
    lag = [
        f"- {name}: {r['errors']} errors, {_pct(r.get('sim_late_frac'))} of simulator steps late, mean lag "
        f"{fc._f(r.get('sim_lag_mean_ms'))} simulated ms"
        + (" (LAGGING: the machine, not the gateway, shapes this row)" if (r.get("sim_lag_mean_ms") or 0)
           > LAG_WARN_MS else "")
        for name, r in rows["runs"].items()
    ]  # fmt: skip
    return "\n".join([head, "", *table.splitlines()[2:], "", "Simulator lag per run:", *lag])


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--time-scale", type=positive_number, default=0.5, help="live: simulated seconds per wall second"
    )
    p.add_argument("--mixes", default=",".join(MIXES), help="live: comma-separated mixes (calm, even, flood)")
    p.add_argument(
        "--base-rate", type=float, default=0.0, help="live: fixed quiet-tenant req/s (simulated), not --load"
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="live: kvgate serve --workers (gateway processes, default 1)",
    )

    p.add_argument(
        "--timing",
        action="store_true",
        help="live: every request asks for x-kvgate-timing; the quiet requests' wait in kvgate and after "
        "their pick go in the JSON (trace, trace_summary), and every request not answered, with why "
        "(trace_not_answered)",
    )


def _workers(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def main_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    rows = asyncio.run(_main(args))
    rows["command"] = "kvgate bench flowcontrol " + " ".join(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "flowcontrol-live.json", rows)
    print(render(rows))
    print()
    wrote(args.out / "flowcontrol-live.json")
    return 0
