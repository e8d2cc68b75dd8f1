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
import contextlib
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console

from kvgate.bench import loadgen, procs, report, workloads
from kvgate.bench.procs import Proc

NETNS_ENV = "KVGATE_BENCH_NETNS"
MODEL = "sim-model"
# Replica KV events on its HTTP port + this, replay on + 2x this (see kvgate.bench.simproc).
KV_EVENTS_OFFSET = 1000
DEFAULT_LOAD_FRACTION = 0.8
DEFAULT_TIME_SCALE = 0.2
# As the fleet scenario ``shared-prefix``: prefix-blind policies collapse long before the fleet's limit.
CAPACITY_PROBE_POLICIES = ("reference", "kvgate", "sglang-cache-aware")
CAPACITY_PROBE_QPS = 200.0  # > 1.4x the default fleet's capacity (~136 req/s)
CAPACITY_PROBE_DURATION = 20.0  # virtual seconds, as ``sweep.run_scenario`` probes


# ---- the simulated fleet -------------------------------------------------------------------------


@dataclass(slots=True)
class FleetSpec:
    replicas: int = 4
    profile: str = "qwen3-32b-h100"
    time_scale: float = 1.0
    num_gpu_blocks: int = 0  # 0 = the profile's
    max_num_seqs: int = 0
    # > 0: KV events on each replica's HTTP port + this (live runs use KV_EVENTS_OFFSET).
    kv_events_offset: int = 0
    sim_procs: int = 1  # simulator processes the replicas are split over

    def engine_overrides(self) -> dict[str, Any]:
        """The ``EngineConfig`` overrides this fleet's replicas run with (for the fleet simulator)."""
        out: dict[str, Any] = {}
        if self.num_gpu_blocks:
            out["num_gpu_blocks"] = self.num_gpu_blocks
        if self.max_num_seqs:
            out["max_num_seqs"] = self.max_num_seqs
        return out


def _split(n: int, parts: int) -> list[int]:
    """``n`` replicas over ``parts`` processes, as evenly as possible (no empty process)."""
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def sim_cmd(spec: FleetSpec, replicas: int, first_index: int) -> list[str]:
    return [
        sys.executable, "-m", "kvgate.bench.simproc",
        "--replicas", str(replicas),
        "--first-index", str(first_index),
        "--profile", spec.profile,
        "--time-scale", str(spec.time_scale),
        "--model", MODEL,
        "--num-gpu-blocks", str(spec.num_gpu_blocks),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--kv-events-offset", str(spec.kv_events_offset),
    ]  # fmt: skip


async def start_sim(spec: FleetSpec, wait_s: float = 60.0) -> tuple[Proc, list[str]]:
    """A simulated fleet of ``spec.replicas`` in one subprocess (``kvgate.bench.simproc``, the
    simulator's own HTTP replicas); returns it and the replicas' base URLs."""
    if spec.sim_procs != 1:
        raise ValueError("start_sim runs one simulator process; use start_fleet for several")
    (proc,), urls = await start_fleet(spec, wait_s)
    return proc, urls


async def start_fleet(spec: FleetSpec, wait_s: float = 60.0) -> tuple[list[Proc], list[str]]:
    """A simulated fleet of ``spec.replicas`` in ``spec.sim_procs`` subprocesses
    (``kvgate.bench.simproc``, the simulator's own HTTP replicas); returns them and their base URLs."""
    started: list[Proc] = []
    urls: list[str] = []
    first = 0
    try:
        for n in _split(spec.replicas, spec.sim_procs):
            proc, matches = await procs.start(
                "simulated fleet", sim_cmd(spec, n, first), r"replica \d+ (http://127\.0\.0\.1:\d+)",
                count=n, wait_s=wait_s,
            )  # fmt: skip
            started.append(proc)
            urls += [m.group(1) for m in matches]
            first += n
        for u in urls:
            await procs.wait_http(u + "/health", wait_s=wait_s)
    except BaseException:
        for p in started:
            await p.stop()
        raise
    return started, urls


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


async def sim_states(session: aiohttp.ClientSession, urls: list[str]) -> list[dict[str, Any]]:
    """Each replica's ``/sim/state`` (step and lag counters)."""

    async def one(u: str) -> dict[str, Any]:
        async with session.get(u + "/sim/state", timeout=aiohttp.ClientTimeout(total=30)) as r:
            got: dict[str, Any] = await r.json()
            return got

    return list(await asyncio.gather(*(one(u) for u in urls)))


def lag_summary(
    before: list[dict[str, Any]], after: list[dict[str, Any]], time_scale: float
) -> dict[str, Any]:
    """How far the simulator fell behind its own step deadlines between two ``/sim/state`` reads.

    ``sim_late_frac``: steps delivered more than the simulator's slack (5 ms wall) late;
    ``sim_lag_mean_ms``: mean lag per step in simulated ms (wall lag x time scale), i.e. the error the
    simulator's own CPU adds to every simulated step; ``sim_lag_max_ms``: worst step since start.
    """
    steps = sum(a["steps"] - b["steps"] for a, b in zip(after, before, strict=True))
    late = sum(a["steps_late"] - b["steps_late"] for a, b in zip(after, before, strict=True))
    lag = sum(a["step_lag_sum_s"] - b["step_lag_sum_s"] for a, b in zip(after, before, strict=True))
    return {
        "sim_steps": steps,
        "sim_late_frac": late / steps if steps else None,
        "sim_lag_mean_ms": lag / steps * time_scale * 1000 if steps else None,
        "sim_lag_max_ms": max(a["step_lag_max_s"] for a in after) * time_scale * 1000 if after else None,
    }


# ---- offered load: a fraction of the capacity measured on the virtual-clock fleet ----------------


@dataclass(slots=True)
class LiveLoad:
    """A shared-prefix workload in simulated time (converted to wall time by the fleet's time scale)."""

    qps: float  # offered, per simulated second
    duration: float  # simulated seconds measured
    warmup: float = 4.0  # simulated seconds sent first and not measured (caches and queues settle)
    num_groups: int = 16
    system_prompt_len: int = 3072
    question_len: int = 96
    output_len: int = 32
    slo_ttft: float = 2.0  # simulated seconds
    # Simulated seconds a request may take before it counts as an error: bounds a run whose router
    # lets the queue grow without limit (the stragglers would otherwise take minutes to drain).
    request_timeout: float = 6.0
    seed: int = 0
    load_fraction: float | None = None  # of ``capacity``; None when ``qps`` was given
    capacity: float | None = None  # req/s per simulated second, measured (``measure_capacity``)

    def specs(self, count: int, seed: int | None = None) -> Iterator[workloads.RequestSpec]:
        """The workload; the capacity probe draws from the same generator with the same parameters."""
        return workloads.shared_prefix_stream(
            num_groups=self.num_groups,
            system_prompt_len=self.system_prompt_len,
            question_len=self.question_len,
            output_len=self.output_len,
            count=count,
            seed=self.seed if seed is None else seed,
            model=MODEL,
        )


def wall_qps(load: LiveLoad, spec: FleetSpec) -> float:
    """Wall-clock arrivals per second: simulated QPS x time scale."""
    return load.qps * spec.time_scale


def live_scenario(spec: FleetSpec, load: LiveLoad) -> Any:
    """A fleet-simulator ``Scenario`` of exactly this live fleet and workload (for the capacity probe)."""
    from kvgate.bench.fleetsim import ReplicaSpec
    from kvgate.bench.scenarios import Scenario

    def make(seed: int, count: int) -> Iterator[workloads.RequestSpec]:
        return load.specs(count, seed)

    return Scenario(
        name="live-shared-prefix",
        title=(
            f"{spec.replicas} x {spec.profile}, {load.num_groups} customers x {load.system_prompt_len}-token "
            f"prompts + {load.question_len}-token questions, {load.output_len} output tokens"
        ),
        replicas=[ReplicaSpec(spec.profile, spec.replicas, spec.engine_overrides())],
        workload=make,
        load_fractions=[],
        duration=CAPACITY_PROBE_DURATION,
        how_scaled="The live benchmark's fleet and workload, on the virtual clock.",
        slo_ttft=load.slo_ttft,
        probe_policies=list(CAPACITY_PROBE_POLICIES),
        probe_qps=CAPACITY_PROBE_QPS,
    )


@dataclass(slots=True)
class Capacity:
    req_per_s: float  # the best probe
    policy: str  # the policy that served it
    probes: dict[str, float] = field(default_factory=dict)  # served req/s per probe policy
    probe_qps: float = CAPACITY_PROBE_QPS
    probe_duration: float = CAPACITY_PROBE_DURATION
    seed: int = 0
    method: str = (
        "kvgate.bench.sweep.probe_capacity on the virtual-clock fleet simulator (same fleet, same "
        "workload generator): the most req/s any probe policy serves when offered probe_qps"
    )


def measure_capacity(
    spec: FleetSpec, load: LiveLoad, seed: int = 0, duration: float = CAPACITY_PROBE_DURATION
) -> Capacity:
    from kvgate.bench.sweep import probe_capacity

    sc = live_scenario(spec, load)
    probes = {pol: probe_capacity(sc, pol, seed, duration) for pol in sc.probe_policies}
    best = max(probes, key=lambda p: probes[p])
    return Capacity(probes[best], best, probes, sc.probe_qps, duration, seed)


# ---- routers -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    name: str
    kind: str  # "kvgate" | "sglang-router" | "vllm-router"
    policy: str  # a kvgate policy, a key of PICKER_CONFIGS (kvgate serve --config), or a peer's policy
    base_url: str | None = None
    proc: Proc | None = None
    skipped: str | None = None  # why it could not run


KVGATE_TARGETS = [
    Target("kvgate (default)", "kvgate", "kvgate"),
    Target("kvgate reference 2/2/3", "kvgate", "reference"),
    Target("kvgate reference + precise", "kvgate", "reference-precise"),
    Target("round robin (kvgate)", "kvgate", "round-robin"),
    Target("least request (kvgate)", "kvgate", "least-request"),
]
PEER_TARGETS = [
    Target("sglang-router cache_aware", "sglang-router", "cache_aware"),
    Target("sglang-router round_robin", "sglang-router", "round_robin"),
    Target("vllm-router cache_aware", "vllm-router", "cache_aware"),
]

# ``kvgate-cost-scorer`` reads the precise scorer's matches when ``prefixPluginRef`` names it (helper B,
# issue #6); ``_with_precise`` keeps the replaced plugin's name. None would drop the target below.
KVGATE_COST_PRECISE_PARAMS: dict[str, Any] | None = {"prefixPluginRef": "prefix-cache-scorer"}
if KVGATE_COST_PRECISE_PARAMS is not None:
    KVGATE_TARGETS.insert(1, Target("kvgate default + precise", "kvgate", "kvgate-precise"))


def precise_scorer_params(offset: int = KV_EVENTS_OFFSET) -> dict[str, Any]:
    """``precise-prefix-cache-scorer`` parameters for the live fleet (see ``kvgate.bench.simproc``)."""
    from kvgate.sim.tokenizer import tokenizer_dir

    return {
        # The simulator's engine publishes its own chained xxh64 block hashes, not vLLM's: key blocks
        # by their token ids instead, with the simulator's own tokenizer on the prompt text.
        "mode": "tokens",
        "tokenizer": str(tokenizer_dir()),
        "eventsPortOffset": offset,
        "eventsBind": False,  # the simulator binds its PUB socket; the gateway connects
        "replayPortOffset": 2 * offset,
        "indexName": "live",
    }


def _with_precise(doc: dict[str, Any], offset: int) -> dict[str, Any]:
    """``doc`` (a picker config) with its prefix scorer replaced by the precise one, live parameters."""
    for plugin in doc.get("plugins") or []:
        if plugin.get("type") in ("prefix-cache-scorer", "precise-prefix-cache-scorer"):
            old = plugin.get("name") or plugin["type"]
            plugin["type"] = "precise-prefix-cache-scorer"
            plugin["name"] = old  # keep the profile's pluginRef valid
            plugin["parameters"] = {**(plugin.get("parameters") or {}), **precise_scorer_params(offset)}
    return doc


def picker_config(policy: str, offset: int = KV_EVENTS_OFFSET) -> dict[str, Any]:
    """The ``EndpointPickerConfig`` mapping of a generated live policy (PICKER_CONFIGS): the precise
    benchmark's profile of that name (``bench/precise.py``), its precise scorer pointed at the live fleet."""
    from kvgate.bench.precise import PRECISE_POLICIES

    if policy not in PICKER_CONFIGS:
        raise KeyError(f"no generated picker config {policy!r}")
    if policy in PRECISE_POLICIES:
        return _with_precise(yaml.safe_load(PRECISE_POLICIES[policy]), offset)
    if policy == "kvgate-precise" and KVGATE_COST_PRECISE_PARAMS is not None:
        # kvgate's default profile with the precise scorer as its prefix plugin.
        from kvgate.config.policies import POLICIES

        doc = _with_precise(yaml.safe_load(POLICIES["kvgate"]), offset)
        for plugin in doc["plugins"]:
            if plugin["type"] == "kvgate-cost-scorer":
                plugin["parameters"] = {**(plugin.get("parameters") or {}), **KVGATE_COST_PRECISE_PARAMS}
        return doc
    raise KeyError(f"no generated picker config {policy!r}")


PICKER_CONFIGS = ("reference-precise", "kvgate-precise")


def gateway_config(policy: str, urls: Sequence[str], offset: int = KV_EVENTS_OFFSET) -> dict[str, Any]:
    """A ``kvgate serve --config`` document: one pool over ``urls`` with a generated picker config."""
    return {  # listen address: ``kvgate serve --host/--port`` flags
        "pools": [
            {
                "name": "default",
                "endpoints": list(urls),
                "models": [MODEL],
                "endpointPickerConfig": picker_config(policy, offset),
            }
        ],
    }


async def start_kvgate(
    policy: str, urls: list[str], wait_s: float = 60.0, kv_offset: int = KV_EVENTS_OFFSET
) -> tuple[Proc, str]:
    common = ("--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING")
    if policy in PICKER_CONFIGS:
        fd, path = tempfile.mkstemp(prefix=f"kvgate-live-{policy}-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(gateway_config(policy, urls, kv_offset), f)
        cmd = procs.kvgate_cmd("serve", "--config", path, *common)
    else:
        path = ""
        cmd = procs.kvgate_cmd(
            "serve", "--endpoints", ",".join(urls), "--model", MODEL, "--policy", policy, *common
        )
    ready = r"listening on (http://[\d.]+:\d+)"
    try:
        proc, m = await procs.start(f"kvgate serve {policy}", cmd, ready, wait_s=wait_s)
    finally:
        if path:  # read at start-up only
            os.unlink(path)
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


async def start_router(t: Target, urls: list[str], spec: FleetSpec) -> tuple[Proc, str]:
    if t.policy in PICKER_CONFIGS and spec.kv_events_offset <= 0:
        raise ValueError(f"{t.name} needs a fleet with KV events (FleetSpec.kv_events_offset > 0)")
    if t.kind == "kvgate":
        return await start_kvgate(t.policy, urls, kv_offset=spec.kv_events_offset)
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
    replicas' prefix-cache and step-lag counters are read at the end of the warm-up and at the end.
    """
    ts = spec.time_scale
    sims, urls = await start_fleet(spec)
    router: Proc | None = None
    try:
        router, base = await start_router(t, urls, spec)
        total = load.warmup + load.duration
        count = int(load.qps * total * 1.3) + 10
        cfg = loadgen.RunConfig(
            base_url=base,
            qps=wall_qps(load, spec),
            concurrency=1024,
            max_requests=count,
            duration=total / ts,
            request_timeout=load.request_timeout / ts,
            seed=load.seed + round_no,
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
            results = await loadgen.run(load.specs(count), cfg, on_done)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The live-only options (``kvgate bench`` adds the shared ones: --quick, --qps, --duration...)."""
    p.add_argument(
        "--load-fraction",
        type=float,
        help=f"live: offered load as a fraction of the measured capacity (default {DEFAULT_LOAD_FRACTION})",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        help=f"live: simulated GPU speed, < 1 slower than real time (default {DEFAULT_TIME_SCALE})",
    )
    p.add_argument("--sim-procs", type=int, help="live: simulator processes the replicas run in (default 1)")


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
    if args.qps:
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
    p = argparse.ArgumentParser(prog="python -m kvgate.bench.live", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.add_argument("--policies", help="comma-separated policies or router kinds")
    p.add_argument("--qps", type=float, help="fixed offered QPS (simulated), instead of --load-fraction")
    p.add_argument("--duration", type=float, help="simulated seconds measured per run")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds")
    p.add_argument("--no-netns", action="store_true", help="don't re-exec inside `unshare -n`")
    add_arguments(p)
    args = p.parse_args(argv)
    policies = args.policies.split(",") if args.policies else None
    return main_from_args(args, policies, reexec_prefix=[sys.executable, "-m", "kvgate.bench.live"])


if __name__ == "__main__":
    sys.exit(main())
