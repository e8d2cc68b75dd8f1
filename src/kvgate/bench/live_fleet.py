"""The live benchmark's simulated fleet (``kvgate sim`` processes) and the offered load: a fraction of the
capacity measured on the virtual-clock fleet simulator (see ``kvgate.bench.live``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from kvgate.bench import procs, workloads
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


class LiveWorkload(Protocol):
    """What ``live.run_target`` sends: a rate, windows and limits in simulated seconds, and the
    requests (``LiveLoad``'s shared prefixes; ``live_multiturn.MixedLiveLoad``'s mixed family)."""

    qps: float
    duration: float
    warmup: float
    slo_ttft: float
    request_timeout: float
    seed: int

    def send_plan(self, time_scale: float) -> tuple[Iterable[workloads.RequestSpec], int]:
        """The requests (any fixed send offsets ``at`` in wall seconds) and how many at most."""
        ...

    def cut_after(self) -> float | None:
        """Simulated seconds from the start after which requests still streaming are cut."""
        ...


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

    def send_plan(self, time_scale: float) -> tuple[Iterator[workloads.RequestSpec], int]:
        """Poisson arrivals drawn by the load generator at ``wall_qps``: no fixed send offsets."""
        count = int(self.qps * (self.warmup + self.duration) * 1.3) + 10
        return self.specs(count), count

    def cut_after(self) -> float | None:
        return None  # ``request_timeout`` bounds every request

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


def wall_qps(load: LiveWorkload, spec: FleetSpec) -> float:
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
