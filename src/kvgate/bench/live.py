"""Live side by side: the same simulated fleet behind each router, over real HTTP on 127.0.0.1.

Routers: ``kvgate serve`` with the kvgate, reference (2/2/3), round-robin and least-request policies,
and the Rust peers ``sglang-router`` (cache_aware, round_robin) and ``vllm-router`` (cache_aware),
installed and launched through ``kvgate.bench.peers``. Every run gets a fresh fleet (the simulator's
HTTP replicas, in one subprocess) and a fresh router, so all start from cold caches; a warm-up is
sent first and left out of the figures. Runs are interleaved: every round visits the routers in a
new shuffled order, and the report takes the median over rounds. A peer that can't be installed
or can't front the simulator is recorded with the reason, not dropped.

The fleet can be time-scaled (< 1 slows simulated GPUs down, so the Python front's own CPU cost is
small next to simulated step times on a 2-core machine); latencies are reported in simulated
seconds (wall x time scale) and rates per simulated second.

Everything runs inside a loopback-only network namespace (``unshare -n`` + ``ip link set lo up``)
unless ``--no-netns``: nothing can leave the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from kvgate.bench import loadgen, procs, report, workloads
from kvgate.bench.procs import Proc

NETNS_ENV = "KVGATE_BENCH_NETNS"
MODEL = "sim-model"


# ---- the simulated fleet -------------------------------------------------------------------------


@dataclass(slots=True)
class FleetSpec:
    replicas: int = 4
    profile: str = "qwen3-32b-h100"
    time_scale: float = 1.0
    num_gpu_blocks: int = 0  # 0 = the profile's
    max_num_seqs: int = 0


async def start_sim(spec: FleetSpec, wait_s: float = 60.0) -> tuple[Proc, list[str]]:
    """A simulated fleet of ``spec.replicas`` in one subprocess (``kvgate.bench.simproc``, the
    simulator's own HTTP replicas); returns their base URLs."""
    cmd = [
        sys.executable, "-m", "kvgate.bench.simproc",
        "--replicas", str(spec.replicas),
        "--profile", spec.profile,
        "--time-scale", str(spec.time_scale),
        "--model", MODEL,
        "--num-gpu-blocks", str(spec.num_gpu_blocks),
        "--max-num-seqs", str(spec.max_num_seqs),
    ]  # fmt: skip
    proc, matches = await procs.start(
        "simulated fleet", cmd, r"replica \d+ (http://127\.0\.0\.1:\d+)", count=spec.replicas, wait_s=wait_s
    )
    urls = [m.group(1) for m in matches]
    for u in urls:
        await procs.wait_http(u + "/health", wait_s=wait_s)
    return proc, urls


def parse_prom(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum the samples of each metric name over all label sets (enough for fleet-wide counters)."""
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = line.find("{")
        sp = line.find(" ")
        if name_end < 0 or name_end > sp:
            name_end = sp
        name = line[:name_end]
        if name in out:
            try:
                out[name] += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return out


HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
WAITING, RUNNING, KV = "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"


async def scrape(session: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, float]]:
    async def one(u: str) -> dict[str, float]:
        # Generous: on a loaded 2-core machine a busy simulator can take seconds to answer.
        async with session.get(u + "/metrics", timeout=aiohttp.ClientTimeout(total=30)) as r:
            return parse_prom(await r.text(), (HITS, QUERIES, WAITING, RUNNING, KV))

    return list(await asyncio.gather(*(one(u) for u in urls)))


# ---- routers -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    name: str
    kind: str  # "kvgate" | "sglang-router" | "vllm-router"
    policy: str
    base_url: str | None = None
    proc: Proc | None = None
    skipped: str | None = None  # why it could not run


KVGATE_TARGETS = [
    Target("kvgate (default)", "kvgate", "kvgate"),
    Target("kvgate reference 2/2/3", "kvgate", "reference"),
    Target("round robin (kvgate)", "kvgate", "round-robin"),
    Target("least request (kvgate)", "kvgate", "least-request"),
]
PEER_TARGETS = [
    Target("sglang-router cache_aware", "sglang-router", "cache_aware"),
    Target("sglang-router round_robin", "sglang-router", "round_robin"),
    Target("vllm-router cache_aware", "vllm-router", "cache_aware"),
]


async def start_kvgate(policy: str, urls: list[str], wait_s: float = 60.0) -> tuple[Proc, str]:
    cmd = procs.kvgate_cmd(
        "serve", "--endpoints", ",".join(urls), "--model", MODEL, "--policy", policy,
        "--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING",
    )  # fmt: skip
    ready = r"listening on (http://[\d.]+:\d+)"
    proc, m = await procs.start(f"kvgate serve {policy}", cmd, ready, wait_s=wait_s)
    return proc, m[0].group(1)


async def start_peer(t: Target, urls: list[str], wait_s: float = 120.0) -> tuple[Proc, str]:
    """A peer router from ``kvgate.bench.peers`` (installed once into a cached venv), on 127.0.0.1.

    The simulator answers ``/model_info`` with its tokenizer directory as ``model_path``, which is
    what sglang-router loads; ``HF_HUB_OFFLINE=1`` makes sure nothing is fetched instead.
    """
    from kvgate.bench import peers

    peer = peers.PEERS[t.kind]
    python = await asyncio.to_thread(peers.ensure_installed, peer)
    port = procs.free_port()
    cmd = peer.command(python, urls, t.policy, "127.0.0.1", port)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RUST_LOG": "warn", "NO_PROXY": "*"}
    proc, _ = await procs.start(t.name, cmd, None, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        await procs.wait_http(base + "/health", wait_s=wait_s)
    except RuntimeError as e:
        await proc.stop()
        raise RuntimeError(f"{e}; last output: {proc.tail(5)}") from None
    return proc, base


# ---- one run -------------------------------------------------------------------------------------


@dataclass(slots=True)
class LiveLoad:
    """A shared-prefix workload in simulated time (converted to wall time by the fleet's time scale)."""

    qps: float  # offered, per simulated second
    duration: float  # simulated seconds measured
    warmup: float = 10.0  # simulated seconds sent first and not measured (caches fill)
    num_groups: int = 16
    system_prompt_len: int = 3072
    question_len: int = 96
    output_len: int = 32
    slo_ttft: float = 2.0  # simulated seconds
    seed: int = 0


async def start_router(t: Target, urls: list[str]) -> tuple[Proc, str]:
    if t.kind == "kvgate":
        return await start_kvgate(t.policy, urls)
    return await start_peer(t, urls)


async def run_target(
    t: Target,
    spec: FleetSpec,
    load: LiveLoad,
    on_done: Callable[[loadgen.RequestResult], None] | None = None,
    round_no: int = 0,
) -> dict[str, Any]:
    """A fresh fleet (so every router starts from cold caches) and router, the workload through it.

    Returns one row in simulated time: requests sent during the warm-up are left out, and the
    replicas' prefix-cache counters are read at the end of the warm-up and at the end.
    """
    ts = spec.time_scale
    sim, urls = await start_sim(spec)
    router: Proc | None = None
    try:
        router, base = await start_router(t, urls)
        total = load.warmup + load.duration
        count = int(load.qps * total * 1.3) + 10
        specs = workloads.shared_prefix_stream(
            num_groups=load.num_groups,
            system_prompt_len=load.system_prompt_len,
            question_len=load.question_len,
            output_len=load.output_len,
            count=count,
            seed=load.seed,
            model=MODEL,
        )
        cfg = loadgen.RunConfig(
            base_url=base,
            qps=load.qps * ts,  # wall-clock arrivals: simulated QPS x time scale
            concurrency=1024,
            max_requests=count,
            duration=total / ts,
            request_timeout=max(60.0, 3 * total / ts),
            seed=load.seed + round_no,
        )
        col = report.Collector(slo_ttft=load.slo_ttft)
        async with aiohttp.ClientSession() as session:
            before: list[dict[str, float]] = []
            stop = asyncio.Event()
            t0 = time.perf_counter()

            async def sampler() -> None:
                # Snapshot the counters when the warm-up ends, then sample per-replica load.
                await asyncio.sleep(load.warmup / ts)
                before.extend(await scrape(session, urls))
                while not stop.is_set():
                    try:
                        st = await scrape(session, urls)
                        now = (time.perf_counter() - t0) * ts
                        col.load.add(now, [x[WAITING] for x in st], [x[KV] for x in st])
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)

            samp = asyncio.create_task(sampler())
            results = await loadgen.run(specs, cfg, on_done)
            stop.set()
            await samp
            after = await scrape(session, urls)
    finally:
        if router is not None:
            await router.stop()
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
    return col.summary(
        hit_rate=hits / queries if queries else None,
        extra={"router": t.name, "policy": t.name, "qps": load.qps, "round": round_no},
    )


# ---- the whole comparison ------------------------------------------------------------------------


def in_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def reexec_in_netns(argv: list[str]) -> int:
    """Re-run this command inside a fresh loopback-only network namespace."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        print("live: `unshare`/`ip` not found; rerun with --no-netns (no isolation)", file=sys.stderr)
        return 2
    cmd = " ".join(shlex.quote(a) for a in procs.kvgate_cmd("bench", *argv))
    inner = f"ip link set lo up && exec {cmd}"
    env = {**os.environ, NETNS_ENV: "1"}
    return subprocess.call(["unshare", "-n", "sh", "-c", inner], env=env)


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
            p90 = row["ttft_p90"]
            hit = row["prefix_hit_rate"]
            console.print(
                f"  round {rnd}  {t.name:<28} TTFT p90 {'-' if p90 is None else f'{p90:.3f}'} s  "
                f"hit {'-' if hit is None else f'{hit:.0%}'}  out {row['output_tok_per_s']:.0f} tok/s  "
                f"errors {row['errors']}"
            )
    return rows


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


def main_from_args(args: argparse.Namespace, policies: list[str] | None) -> int:
    if not args.no_netns and not in_netns():
        i = sys.argv.index("live") if "live" in sys.argv else -1
        return reexec_in_netns(sys.argv[i:] if i >= 0 else ["live"])
    spec = FleetSpec()
    load = LiveLoad(
        qps=args.qps or 12.0,
        duration=args.duration or (20.0 if args.quick else 60.0),
        warmup=5.0 if args.quick else 10.0,
        seed=args.seed,
    )
    targets = [*KVGATE_TARGETS, *PEER_TARGETS]
    if policies:
        targets = [t for t in targets if t.policy in policies or t.kind in policies]
    console = Console()
    console.print(
        f"[bold]live[/bold]: {spec.replicas} x {spec.profile} (time scale {spec.time_scale:g}), "
        f"{load.num_groups} customers x {load.system_prompt_len}-token prompts, {load.qps:g} req/s, "
        f"{load.warmup:g} s warm-up + {load.duration:g} s per run, {args.repeats} round(s); "
        f"netns: {in_netns()}"
    )
    t0 = time.perf_counter()
    rows = asyncio.run(compare(targets, spec, load, args.repeats, console))
    med = median_rows(rows)
    skipped = {t.name: t.skipped for t in targets if t.skipped}
    payload = {
        "scenario": "live-shared-prefix",
        "fleet": asdict(spec),
        "load": asdict(load),
        "repeats": args.repeats,
        "netns": in_netns(),
        "wall_s": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "not_run": skipped,
        "rows": rows,
        "median": med,
    }
    base = Path(args.out) / ("live-shared-prefix-quick" if args.quick else "live-shared-prefix")
    report.write_json(base.with_suffix(".json"), payload)
    table = report.markdown_table(med, [("router", "router"), ("rounds", "rounds")])
    notes = "".join(f"\n- {k}: not run: {v}" for k, v in skipped.items())
    base.with_suffix(".md").write_text(f"# Live side by side (simulated seconds)\n\n{table}\n{notes}\n")
    print(table + notes)
    return 0
