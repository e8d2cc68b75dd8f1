"""``kvgate bench multicluster --live``: the cluster policies compared live, each cluster in its own network
namespace, real processes throughout, round trips on the wire.

Per cluster (``kvgate.bench.netns``): a network namespace holding ``kvgate sim`` replicas (the pods), its
``kvgate epp`` (ext_proc, gRPC health, ``/v1/pool/aggregate``) and a cluster-local ``kvgate serve`` (Parent
mode). In the root namespace: the global gateway (``kvgate serve --clusters``, one process per run, the
policy under test), the load generator, and a delay relay (``kvgate.bench.delay_relay``) on every path from
the global gateway into a cluster (aggregate, EPP, health, cluster gateway, pods), adding that cluster's
round trip: this kernel has no ``netem`` qdisc, so the RTT is emulated in userspace.

Default fleet: ``east`` 3 x H100 at 5 ms (the gateway's local cluster), ``west`` 2 x H200 at 40 ms, ``eu``
1 x A100 at 80 ms; simulated replicas run at ``--time-scale`` (0.05: each simulated GPU 20x slower than its
profile, so the machine's two cores keep up). Workload: shared-prefix tenants (Zipf-popular system prompts)
with Poisson arrivals at ``--load`` x the live capacity measured at the start of the same run (each
cluster's own gateway driven closed-loop past saturation, completions counted).

Phases per policy (``--phases``, default ``steady,loss``): ``steady``; ``loss``: every process of ``west``
killed (SIGKILL) a third of the way into the measured window and started again at two thirds (it comes
back with empty caches); ``partition``: ``west``'s link cut at a third (its veth down: nothing reset, its
processes keep running; the relay's upstream sockets have the gateway's keep-alive, so a dead path fails
as it would on a direct one) and healed at two thirds (its caches as they were). Per measured
request: ``lost`` = never answered 200 by the global gateway (no cluster took it, or the connection broke
first: what failover must prevent), ``timeouts`` = no first token within the request timeout (stuck in a
queue; counted at the timeout in the TTFT percentiles), ``cut`` = answered, then the stream broke (before
its first token too: a stream's headers leave the pod before its first token, as vLLM's do).
Caches are emptied (every replica restarted through ``/sim/stop``) before each run, so no policy inherits
another's warm caches. Wall-clock figures: run it alone (``flock /work/team/live.lock ...`` here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson
import yaml

from kvgate.aio import STOP_LIMIT_S, cancel_all_and_wait, cancel_and_wait, stop_to_the_end
from kvgate.bench import netns, procs
from kvgate.bench.loadgen import build_body, sse_data
from kvgate.bench.multicluster import _ratio, plot_ttft_bars, rows_vs_hub
from kvgate.bench.outdir import add_out, wrote
from kvgate.bench.procs import Proc
from kvgate.bench.workloads import RequestSpec, poisson_offsets, shared_prefix_stream
from kvgate.entry import ArgumentParser, nonneg_number, positive_int, positive_number, prog

log = logging.getLogger(__name__)
MODEL = "sim-model"
POLICIES = ["kvgate", "llm-d-hub", "round-robin", "active-passive"]
LOCAL = "east"
LOST_CLUSTER = "west"


@dataclass(frozen=True, slots=True)
class LiveClusterDef:
    name: str
    profile: str
    replicas: int
    rtt_ms: float
    gpu: str  # the pods' GPU label (kvgate.io/gpu), as Kubernetes would give the cluster's EPP


DEFAULT_CLUSTERS = (
    LiveClusterDef("east", "llama3-8b-h100", 3, 5.0, "H100"),
    LiveClusterDef("west", "llama3-8b-h200", 2, 40.0, "H200"),
    LiveClusterDef("eu", "llama3-8b-a100", 1, 80.0, "A100"),
)


@dataclass(slots=True)
class LiveWorkload:
    tenants: int = 32
    system_prompt_len: int = 2048
    question_len: int = 256
    output_len: int = 16
    zipf: float = 0.5

    def stream(self, seed: int, count: int) -> Iterator[RequestSpec]:
        return shared_prefix_stream(
            num_groups=self.tenants,
            system_prompt_len=self.system_prompt_len,
            question_len=self.question_len,
            output_len=self.output_len,
            count=count,
            seed=seed,
            model=MODEL,
            zipf=self.zipf,
        )


@dataclass(slots=True)
class LiveConfig:
    clusters: tuple[LiveClusterDef, ...] = DEFAULT_CLUSTERS
    workload: LiveWorkload = field(default_factory=LiveWorkload)
    # Simulated GPUs 20x slower than their profiles: the fleet's req/s stays within the machine's two cores.
    time_scale: float = 0.05
    max_num_seqs: int = 0  # the profile's
    # Per replica, 16-token blocks (16k tokens): a few tenants' prefixes, not all of them, so the KV cache
    # fills under load (the aggregates' main load signal) and where a tenant's prefix is cached matters.
    num_gpu_blocks: int = 1024
    load: float = 0.8
    # Measured wall seconds per run: ~130 requests per phase at the default fleet's 4.4 req/s (20 s gave
    # ~75, too few for a steady p90); the whole command stays near 7 minutes.
    duration: float = 30.0
    # Sent first, not measured. Caches are emptied before each run, so the warm-up must let most tenants
    # be seen once: 5 s (~21 requests; Zipf(0.5) over 32 tenants leaves ~17 unseen) left ~13 % of the
    # measured requests to pay a compulsory miss no policy avoids; 12 s sends ~52 (~8 unseen, ~6 %).
    warmup: float = 12.0
    probe_s: float = 30.0  # capacity probe; completions counted over its last two thirds
    probe_per_replica: int = 8  # closed-loop concurrency per replica (about what its KV cache holds)
    slo_ttft: float = 2.0
    request_timeout: float = 20.0  # a request with no first token by then counts at 20 s
    ttl_s: float = 2.0
    refresh_s: float = 0.5
    seed: int = 0
    # Global gateways (separate processes, same clusters file and policy), arrivals split at random: two
    # see the same snapshots, so a policy that herds sends both gateways' bursts to the same cluster.
    gateways: int = 1


def gateway_seed(seed: int, g: int) -> int:
    """Gateway ``g``'s cluster-policy seed: distinct per gateway (the same seed would make identical random
    picks, the worst case for herding), reproducible from the run's ``--seed``."""
    return seed * 1000 + g


# --- the fleet -------------------------------------------------------------------------------------
class LiveCluster:
    def __init__(self, d: LiveClusterDef, index: int, net: int, cfg: LiveConfig, log_dir: Path) -> None:
        self.d = d
        self.ns = netns.NsCluster(d.name, index, net)
        self.cfg = cfg
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}
        self.relay_ports: dict[str, int] = {}  # service -> 127.0.0.1 port of its relay

    @property
    def pods(self) -> list[str]:
        return [f"{self.ns.pod_addr}:{netns.SIM_PORT + i}" for i in range(self.d.replicas)]

    def _cmd(self, *args: str) -> list[str]:
        return [*self.ns.exec_prefix(), *procs.kvgate_cmd(*args)]

    async def start(self) -> None:
        d, ts = self.d, self.cfg.time_scale
        specs = {
            "sim": self._cmd(
                "sim", "--replicas", str(d.replicas), "--profile", d.profile, "--host", "0.0.0.0",
                "--base-port", str(netns.SIM_PORT), "--model", MODEL, "--time-scale", str(ts),
                "--max-num-seqs", str(self.cfg.max_num_seqs),  # 0: the profile's
                "--num-gpu-blocks", str(self.cfg.num_gpu_blocks),
                "--log-level", "WARNING",
            ),
            "epp": self._cmd(
                "epp", "--endpoints", ",".join(self.pods), "--model", MODEL, "--pool-name", d.name,
                "--endpoint-label", f"kvgate.io/gpu={d.gpu}",
                "--host", "0.0.0.0", "--port", str(netns.EPP_PORT),
                "--grpc-health-port", str(netns.HEALTH_PORT), "--metrics-port", str(netns.METRICS_PORT),
                "--plaintext", "--log-level", "warning",
            ),
            "gateway": self._cmd(
                "serve", "--endpoints", ",".join(f"http://{p}" for p in self.pods), "--model", MODEL,
                "--host", "0.0.0.0", "--port", str(netns.GW_PORT), "--admin-port", str(netns.GW_ADMIN_PORT),
                "--log-level", "WARNING",
            ),
        }  # fmt: skip
        for name, cmd in specs.items():
            self.procs[name], _ = await procs.start(f"{d.name} {name}", cmd, None)

    async def wait_ready(self, limit_s: float = 120.0) -> None:
        a = self.ns.addr
        await procs.wait_http(f"http://{a}:{netns.METRICS_PORT}/metrics", limit_s)
        await procs.wait_http(f"http://{a}:{netns.GW_ADMIN_PORT}/healthz", limit_s)
        await self.wait_pods_ready(limit_s)

    async def wait_pods_ready(self, limit_s: float = 60.0) -> None:
        """Until the cluster's own EPP counts every pod ready (healthy, freshly scraped)."""
        from kvgate.datalayer.aggregate import decode

        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        url = f"http://{self.ns.addr}:{netns.METRICS_PORT}/v1/pool/aggregate"
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if decode(await r.read()).ready_endpoints == self.d.replicas:
                            return
                if loop.time() > deadline:
                    raise RuntimeError(f"{self.d.name}: pods not ready within {limit_s:.0f} s")
                await asyncio.sleep(0.2)

    async def reset_caches(self) -> None:
        """Every replica restarted empty (``/sim/stop`` with an immediate restart), then ready again."""
        async with aiohttp.ClientSession() as http:
            for i in range(self.d.replicas):
                url = f"http://{self.ns.addr}:{netns.SIM_PORT + i}/sim/stop"
                async with http.post(url, json={"restart_after_s": 0}) as r:
                    await r.read()
        await asyncio.sleep(0.5)
        await self.wait_pods_ready()

    async def kill(self) -> None:
        """The cluster dies: every process SIGKILLed at once (connections reset, nothing drained)."""
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.proc.kill()
        await self.stop()

    async def stop(self) -> None:
        """Every process stopped (``Proc.stop``: SIGTERM, SIGKILL after its grace, its output reader
        ended), to the end also when cancelled meanwhile, the cancellation raised after
        (``stop_to_the_end``: a cancel stopped the process it landed in and left the others running)."""
        await stop_to_the_end(self._stop(), f"cluster {self.d.name}: stopping its processes", log)

    async def _stop(self) -> None:
        for name, p in list(self.procs.items()):  # (one that fails to stop does not keep the next running)
            try:
                await p.stop()
            except Exception:
                log.exception("cluster %s: stopping its %s failed", self.d.name, name)
        self.procs.clear()

    def routes(self) -> list[tuple[str, str]]:
        """(service, relay route) for every path from the root namespace into this cluster."""
        a, rtt = self.ns.addr, self.d.rtt_ms
        out = [
            (svc, f"127.0.0.1:0={a}:{port}@{rtt:g}")
            for svc, port in (
                ("aggregate", netns.METRICS_PORT),
                ("epp", netns.EPP_PORT),
                ("health", netns.HEALTH_PORT),
                ("gateway", netns.GW_PORT),
            )
        ]
        for i in range(self.d.replicas):
            port = netns.SIM_PORT + i
            out.append((f"pod{i}", f"{self.ns.pod_addr}:{port}={a}:{port}@{rtt:g}"))
        return out

    def spec(self, priority: int) -> dict[str, Any]:
        p = self.relay_ports
        return {
            "name": self.d.name,
            "aggregate": f"http://127.0.0.1:{p['aggregate']}/v1/pool/aggregate",
            "gateway": f"127.0.0.1:{p['gateway']}",
            "epp": f"127.0.0.1:{p['epp']}",
            "health": f"127.0.0.1:{p['health']}",
            "rtt_ms": self.d.rtt_ms,
            "priority": priority,
        }


async def start_relay(clusters: list[LiveCluster]) -> Proc:
    routes = [(c, svc, r) for c in clusters for svc, r in c.routes()]
    cmd = [sys.executable, "-m", "kvgate.bench.delay_relay"]
    for _, _, r in routes:
        cmd += ["--route", r]
    proc, matches = await procs.start(
        "delay relay", cmd, r"relay (\S+):(\d+) -> (\S+):(\d+) rtt", count=len(routes), wait_s=60
    )
    for (c, svc, _), m in zip(routes, matches, strict=True):
        c.relay_ports[svc] = int(m.group(2))
    return proc


# --- load ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Result:
    start: float  # offset from the run's start, s
    cluster: str = ""
    ttft: float | None = None
    error: str | None = None
    done: bool = False
    timed_out: bool = False
    status: int = 0  # the global gateway's answer (0: none)
    group: str = ""  # the request's tenant (shared-prefix group)
    prompt_tokens: int = 0  # from the stream's usage event
    cached_tokens: int = 0  # prompt tokens served from the prefix cache there


async def _send(
    http: aiohttp.ClientSession, url: str, spec: RequestSpec, t0: float, limit_s: float
) -> Result:
    start = time.perf_counter()
    res = Result(start - t0, group=spec.group)
    try:
        async with http.post(
            url + "/v1/completions",
            data=orjson.dumps(build_body(spec)),
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=limit_s),
        ) as resp:
            res.cluster = resp.headers.get("x-kvgate-cluster", "")
            res.status = resp.status
            if resp.status != 200:
                res.error = f"http {resp.status}: {(await resp.text())[:160]}"
                return res
            async for data in sse_data(resp.content):
                if data == b"[DONE]":
                    res.done = True
                    break
                if b'"prompt_tokens"' in data:  # the usage event: did the prefix hit the cache there
                    usage = orjson.loads(data).get("usage") or {}
                    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    res.cached_tokens = int(details.get("cached_tokens") or 0)
                if res.ttft is None and b'"text"' in data:
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        res.error = str(chunk["error"])[:160]
                        return res
                    if any(c.get("text") for c in chunk.get("choices") or ()):
                        res.ttft = time.perf_counter() - start
            if not res.done:
                res.error = "stream ended without [DONE]"
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"[:160]
        res.timed_out = isinstance(e, TimeoutError)
    return res


async def open_loop(
    url: str | list[str],
    specs: Iterator[RequestSpec],
    qps: float,
    duration: float,
    seed: int,
    limit_s: float,
    events: list[tuple[float, Any]] | None = None,
) -> list[Result]:
    """Poisson arrivals at ``qps`` for ``duration`` s; ``events`` (offset, coroutine factory) run on time.
    Several ``url``s (global gateways): each request goes to one of them at random. Ended early (a
    cancel, a failed request), it ends its event and request tasks before it returns (review s14-stops
    I2: a cancel in the arrival loop left them running while the bench tore its clusters down, a
    cluster's restart event starting processes in a namespace being destroyed)."""
    urls = [url] if isinstance(url, str) else url
    pick = random.Random(seed + 1)
    results: list[Result] = []
    tasks: set[asyncio.Task[Any]] = set()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        try:
            t0 = time.perf_counter()
            for at, make in events or ():

                async def fire(at: float = at, make: Any = make) -> None:
                    await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                    await make()

                t = asyncio.create_task(fire())
                tasks.add(t)
            offsets = poisson_offsets(random.Random(seed), qps, int(qps * duration * 2) + 100)
            for spec, at in zip(specs, offsets, strict=False):
                if at > duration:
                    break
                delay = at - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)

                async def one(spec: RequestSpec = spec, url: str = pick.choice(urls)) -> None:
                    results.append(await _send(http, url, spec, t0, limit_s))

                t = asyncio.create_task(one())
                tasks.add(t)
            await asyncio.gather(*tasks)
        finally:  # (before the session closes: the requests still use it)
            if running := [t for t in tasks if not t.done()]:
                await cancel_all_and_wait(running, "the open loop's task", log)
    return results


async def closed_loop(url: str, specs: Iterator[RequestSpec], workers: int, duration: float,
                      limit_s: float) -> list[tuple[float, bool]]:  # fmt: skip
    """(completion offset, ok) for ``workers`` back-to-back senders over ``duration`` s."""
    out: list[tuple[float, bool]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        t0 = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() - t0 < duration:
                spec = next(specs, None)
                if spec is None:
                    return
                r = await _send(http, url, spec, t0, limit_s)
                out.append((time.perf_counter() - t0, r.error is None))

        await asyncio.gather(*(worker() for _ in range(workers)))
    return out


async def measure_capacity(clusters: list[LiveCluster], cfg: LiveConfig) -> dict[str, float]:
    """Req/s each cluster completes when driven past saturation through its own gateway (no relay: the
    cluster's capacity, not the link's), all clusters at once; counted over the probe's last two thirds."""

    async def one(c: LiveCluster, k: int) -> float:
        url = f"http://{c.ns.addr}:{netns.GW_PORT}"
        specs = cfg.workload.stream(cfg.seed + 1000 + k, 100_000)
        got = await closed_loop(url, specs, cfg.probe_per_replica * c.d.replicas, cfg.probe_s, 60.0)
        t_from = cfg.probe_s / 3
        return sum(1 for t, ok in got if ok and t_from <= t <= cfg.probe_s) / (cfg.probe_s - t_from)

    caps = await asyncio.gather(*(one(c, k) for k, c in enumerate(clusters)))
    return {c.d.name: cap for c, cap in zip(clusters, caps, strict=True)}


# --- one run ---------------------------------------------------------------------------------------
def trace_kinds(res: list[Result], warmup: float, timeout: float) -> dict[str, Any]:
    """What makes the p90, per measured request: a hit (at least half its prompt cached where it ran) or
    a miss, and which miss: ``first`` (its tenant's first request anywhere since the caches were
    emptied, warm-up included), ``second`` (its tenant's first in this cluster, served elsewhere before:
    a spill) or ``repeat`` (a cluster that had served the tenant: an eviction, or another replica);
    ``none``: no token. ``counts`` over the measured requests, ``p90_set`` over those at or above the
    p90 TTFT, by kind and cluster."""
    seen: dict[str, set[str]] = {}
    kinds: list[tuple[Result, str]] = []
    for r in sorted(res, key=lambda r: r.start):  # (results come in completion order: first = first sent)
        kind = "none"
        if r.ttft is not None and r.cluster:
            where = seen.setdefault(r.group, set())
            if r.prompt_tokens and r.cached_tokens / r.prompt_tokens >= 0.5:
                kind = "hit"
            else:
                kind = "first" if not where else ("second" if r.cluster not in where else "repeat")
            where.add(r.cluster)
        if r.start >= warmup:
            kinds.append((r, kind))
    counts: dict[str, int] = {}
    for _, k in kinds:
        counts[k] = counts.get(k, 0) + 1
    p90 = _pct([timeout if r.ttft is None else r.ttft for r, _ in kinds], 0.9)
    top: dict[str, int] = {}
    if p90 is not None:
        for r, k in kinds:
            if (timeout if r.ttft is None else r.ttft) >= p90:
                key = f"{k}@{r.cluster or '-'}"
                top[key] = top.get(key, 0) + 1
    return {"counts": counts, "p90_set": top}


def after_return(res: list[Result], cluster: str, since: float) -> dict[str, Any]:
    """Requests started from ``since`` (2 s after the lost cluster's return): how many went to it, and
    its TTFT p50 against the others'."""
    later = [r for r in res if r.start >= since and r.ttft is not None]
    there = [r.ttft for r in later if r.cluster == cluster and r.ttft is not None]
    rest = [r.ttft for r in later if r.cluster != cluster and r.ttft is not None]
    return {"sent": len(there), "of": len(later), "ttft_p50": _pct(there, 0.5), "others_p50": _pct(rest, 0.5)}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _gateway_metrics(url: str) -> dict[str, float]:
    from kvgate.bench.live_fleet import parse_prom

    names = ("kvgate_multicluster_attempts_failed_total", "kvgate_multicluster_failed_total")
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        return parse_prom(await r.text(), names)


async def _wait_clusters_fresh(url: str, names: set[str], limit_s: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url + "/v1/clusters", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    got = {c["name"] for c in await r.json() if c["fresh"] and c["ready_endpoints"]}
                    if names <= got:
                        return
            if loop.time() > deadline:
                raise RuntimeError(f"global gateway: clusters not fresh within {limit_s:.0f} s")
            await asyncio.sleep(0.2)


# What the first global gateway's policy has learnt per cluster (``/v1/clusters``), sampled each
# LEARNT_EVERY_S into the row's ``learnt``: [offset s, cluster, *these] (None where not learnt yet).
LEARNT_FIELDS = ("ttft_floor_s", "miss_cost_s", "hit_ttft_s", "miss_ttft_s", "hit_n", "miss_n", "model_bias",
                 "decode_s", "ramp_window", "home_weight", "first_to", "first_away")  # fmt: skip
LEARNT_EVERY_S = 1.0


async def _poll_learnt(url: str, t0: float, out: list[list[Any]]) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            await asyncio.sleep(LEARNT_EVERY_S)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(url + "/v1/clusters", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    at = round(time.perf_counter() - t0, 2)
                    for c in await r.json():
                        out.append([at, c["name"], *(_round(c.get(k)) for k in LEARNT_FIELDS)])


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


PHASES = ("steady", "loss", "partition")


async def run_policy(policy: str, phase: str, qps: float, clusters: list[LiveCluster], cfg: LiveConfig,
                     clusters_file: Path, out: TextIO) -> dict[str, Any]:  # fmt: skip
    """One measured run. ``loss``: every process of ``west`` killed a third of the way into the window,
    started again (empty caches) at two thirds. ``partition``: ``west``'s link cut then (its processes
    keep running, nothing is reset), healed at two thirds (its caches as they were)."""
    for c in clusters:
        await c.reset_caches()
    gws: list[Proc] = []
    urls: list[str] = []
    lost_c = next(c for c in clusters if c.d.name == LOST_CLUSTER)
    total = cfg.warmup + cfg.duration
    loss_at, back_at = cfg.warmup + cfg.duration / 3, cfg.warmup + 2 * cfg.duration / 3
    loss = phase != "steady"
    events: list[tuple[float, Any]] = []
    if phase == "loss":
        events = [(loss_at, lost_c.kill), (back_at, lost_c.start)]
    elif phase == "partition":

        async def cut_link() -> None:
            lost_c.ns.cut()

        async def heal_link() -> None:
            lost_c.ns.heal()

        events = [(loss_at, cut_link), (back_at, heal_link)]
    try:
        for g in range(cfg.gateways):  # each its own process, as two gateway replicas would be
            port = procs.free_port()
            gw, _ = await procs.start(
                f"global gateway {g} ({policy})",
                procs.kvgate_cmd("serve", "--clusters", str(clusters_file), "--cluster-policy", policy,
                                 "--cluster-policy-seed", str(gateway_seed(cfg.seed, g)),
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"),
                r"global gateway on",
                wait_s=60,
            )  # fmt: skip
            gws.append(gw)
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            await _wait_clusters_fresh(url, {c.d.name for c in clusters})
        t_start = time.perf_counter()
        learnt: list[list[Any]] = []
        poll = asyncio.create_task(_poll_learnt(urls[0], t_start, learnt))
        try:
            res = await open_loop(urls, cfg.workload.stream(cfg.seed, 100_000), qps, total, cfg.seed,
                                  cfg.request_timeout, events)  # fmt: skip
        finally:
            # (the module's logger; the report is printed to ``out``: with ``run``'s stdout passed here as
            # the logger, a stuck or failed poller's log.error was an AttributeError)
            await cancel_and_wait(poll, "the learnt-clusters poller", log)  # (raises a cancel of the run)
        wall = time.perf_counter() - t_start
        gm: dict[str, float] = {}
        for url in urls:
            for k, v in (await _gateway_metrics(url)).items():
                gm[k] = gm.get(k, 0.0) + v
    finally:
        await stop_gateways(gws)
    if phase == "loss":
        await lost_c.wait_ready()
    elif phase == "partition":
        lost_c.ns.heal()  # idempotent: healed even if the run ended before its heal event
        await lost_c.wait_pods_ready()
    measured = [r for r in res if r.start >= cfg.warmup]
    ok = [r for r in measured if r.error is None and r.ttft is not None]
    started = [r for r in measured if r.ttft is not None]
    timeouts = [r for r in measured if r.ttft is None and r.timed_out]  # stuck in some queue
    # Lost: the gateway never answered 200 (no cluster could take it, or the connection broke first): what
    # failover must prevent. Cut: answered 200, then broke; a stream's headers leave the pod before its
    # first token (as vLLM's do), so a request still queued in a cluster that dies is cut, not retried.
    lost = [r for r in measured if r.status != 200 and not r.timed_out]
    cut = [r for r in measured if r.status == 200 and r.error is not None and not r.timed_out]
    # TTFT percentiles over every measured request: one that never started counts as the request timeout.
    ttfts = [cfg.request_timeout if r.ttft is None else r.ttft for r in measured]
    served: dict[str, int] = {}
    for r in started:
        served[r.cluster] = served.get(r.cluster, 0) + 1
    # Where each tenant was served: a tenant on one cluster needs its prefix cached there only.
    tenant_clusters: dict[str, set[str]] = {}
    for r in started:
        tenant_clusters.setdefault(r.group, set()).add(r.cluster)
    prompt_tok = sum(r.prompt_tokens for r in ok)
    errors: dict[str, int] = {}
    for r in lost + cut:
        key = f"{r.cluster or '-'}: {(r.error or 'no token')[:60]}"
        errors[key] = errors.get(key, 0) + 1
    row: dict[str, Any] = {
        "phase": phase,
        "policy": policy,
        "sent": len(measured),
        "ok": len(ok),
        "ttft_p50": _pct(ttfts, 0.5),
        "ttft_p90": _pct(ttfts, 0.9),
        "ttft_p99": _pct(ttfts, 0.99),
        "goodput_req_per_s": sum(1 for r in ok if r.ttft is not None and r.ttft < cfg.slo_ttft)
        / cfg.duration,
        "cross_cluster_share": (sum(v for k, v in served.items() if k != LOCAL) / len(started))
        if started
        else 0.0,
        "served_by": served,
        "prefix_hit_rate": sum(r.cached_tokens for r in ok) / prompt_tok if prompt_tok else None,
        "clusters_per_tenant": (
            sum(len(v) for v in tenant_clusters.values()) / len(tenant_clusters) if tenant_clusters else None
        ),
        "lost": len(lost),
        "timeouts": len(timeouts),
        "cut": len(cut),
        "cut_before_token": sum(1 for r in cut if r.ttft is None),
        "retries": int(gm.get("kvgate_multicluster_attempts_failed_total", 0)),
        "gateway_failed": int(gm.get("kvgate_multicluster_failed_total", 0)),
        "errors": errors,
        "wall_s": wall,
        "timeline": [
            (round(r.start, 3), r.cluster, None if r.ttft is None else round(r.ttft, 4)) for r in res
        ],
        # Beside the timeline, per request: its tenant and the share of its prompt cached where it ran.
        "timeline_tenant": [r.group for r in res],
        "timeline_cached": [
            round(r.cached_tokens / r.prompt_tokens, 3) if r.prompt_tokens else None for r in res
        ],
    }
    row["trace"] = trace_kinds(res, cfg.warmup, cfg.request_timeout)
    if learnt:
        row["learnt"] = {"fields": list(LEARNT_FIELDS), "samples": learnt}
    if loss:
        row["loss_at_s"], row["back_at_s"] = loss_at, back_at
        row["after_return"] = after_return(res, LOST_CLUSTER, back_at + 2.0)
    print(
        f"{row['phase']:<6} {policy:<15} p50 {_ms(row['ttft_p50'])} ms  p90 {_ms(row['ttft_p90'])} ms  "
        f"goodput {row['goodput_req_per_s']:5.2f}/s  cross {row['cross_cluster_share']:.2f}  "
        f"hit {_share(row['prefix_hit_rate'])}  clusters/tenant {_num(row['clusters_per_tenant'])}  "
        f"lost {row['lost']}  timeouts {row['timeouts']}  cut {row['cut']} ({row['cut_before_token']} before "
        f"a token)  retries {row['retries']}  "
        f"served {served}  kinds {row['trace']['counts']}  p90 set {row['trace']['p90_set']}"
        + (f"  after return {row['after_return']}" if loss else ""),
        file=out,
        flush=True,
    )
    return row


def _ms(x: float | None) -> str:
    return "   n/a" if x is None else f"{x * 1000:6.0f}"


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# --- report ----------------------------------------------------------------------------------------
def ttft_floors(rows: list[dict[str, Any]], q: float = 0.05) -> dict[str, float]:
    """Per cluster, the ``q`` quantile of every answered TTFT in the runs (warm-up included): about what a
    request there waits at best, a cache hit on a quiet replica. No policy's p90 can go below the floor
    of the clusters it uses."""
    by: dict[str, list[float]] = {}
    for r in rows:
        for _t, cluster, ttft in r["timeline"]:
            if cluster and ttft is not None:
                by.setdefault(cluster, []).append(ttft)
    return {c: v for c, xs in by.items() if (v := _pct(xs, q)) is not None}


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    names = [c["name"] for c in meta["clusters"]]
    lines = [
        "| phase | policy | TTFT p50 (ms) | TTFT p90 (ms) | p90 / llm-d-hub | goodput (req/s, TTFT < "
        f"{meta['slo_ttft']:.1f} s) | cross-cluster share | prefix hit rate | clusters per tenant | lost | "
        f"timeouts | cut (before a token) | retries | served {'/'.join(names)} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, r, ratio in rows_vs_hub(rows):
        by = r["served_by"]
        lines.append(
            f"| {phase} | {r['policy']} | {_ms(r['ttft_p50']).strip()} | {_ms(r['ttft_p90']).strip()} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} | {r['goodput_req_per_s']:.2f} | "
            f"{r['cross_cluster_share']:.2f} | {_share(r.get('prefix_hit_rate'))} | "
            f"{_num(r.get('clusters_per_tenant'))} | {r['lost']} | {r.get('timeouts', 0)} | "
            f"{r['cut']} ({r.get('cut_before_token', 0)}) | "
            f"{r['retries']} | "
            f"{'/'.join(str(by.get(n, 0)) for n in names)} |"
        )
    return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    phases = [ph for ph in PHASES if any(r["phase"] == ph for r in rows)]
    plot_ttft_bars(path, rows, phases, "TTFT (ms, wall clock)", "live, {phase}: TTFT by cluster policy")


def plot_timeline(path: Path, rows: list[dict[str, Any]], names: list[str], timeout: float) -> bool:
    """Loss and partition phases: each request's arrival vs TTFT, coloured by the cluster that served it.
    False (nothing written) when the runs had neither phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in rows if r["phase"] in ("loss", "partition")]
    if not rs:
        return False
    fig, axes = plt.subplots(len(rs), 1, figsize=(10, 2.3 * len(rs)), sharex=True, squeeze=False)
    colours = dict(zip(names, ("tab:blue", "tab:orange", "tab:green", "tab:purple"), strict=False))
    for ax, r in zip(axes[:, 0], rs, strict=True):
        for cl, col in colours.items():
            pts = [(t, v * 1000) for t, c, v in r["timeline"] if c == cl and v is not None]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=3, c=col, label=cl)
        never = [t for t, _, v in r["timeline"] if v is None]
        if never:
            ax.scatter(never, [timeout * 1000] * len(never), s=6, c="red", marker="x", label="no token")
        ax.axvspan(r["loss_at_s"], r["back_at_s"], color="grey", alpha=0.15)
        ax.set_yscale("log")
        ax.set_ylabel("TTFT (ms)")
        ax.set_title(
            f"{r['policy']}, {r['phase']}: where requests went (grey: {LOST_CLUSTER} "
            f"{'killed, then restarted' if r['phase'] == 'loss' else 'cut off, then healed'})",
            fontsize=9,
        )
    axes[0, 0].legend(loc="upper right", markerscale=3, fontsize=8)
    axes[-1, 0].set_xlabel("arrival (wall s from the run's start)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- teardown --------------------------------------------------------------------------------------
# Longest one ``Proc.stop`` takes (SIGTERM, its grace, SIGKILL, its grace again), s.
_PROC_STOP_S = 2 * 5.0


async def stop_gateways(gws: list[Proc]) -> None:
    """Every global gateway of a run stopped, each whatever the one before raised (logged), to the end
    also when cancelled meanwhile, the cancellation raised after (``stop_to_the_end``; review s14-stops
    M1: a cancel landing in one gateway's stop ended the loop, the others left running)."""
    limit = STOP_LIMIT_S + _PROC_STOP_S * len(gws)
    await stop_to_the_end(
        _stop_procs(gws, "global gateway"), "the run's global gateways: stopping", log, limit
    )


async def _stop_procs(ps: list[Proc], what: str) -> None:
    for i, p in enumerate(ps):
        try:
            await p.stop()
        except Exception:  # (one that fails to stop does not keep the next running)
            log.exception("stopping %s %d failed", what, i)


async def tear_down(relay: Proc | None, clusters: list[LiveCluster], net: int) -> None:
    """The live bench's cleanup: the relay and every cluster's processes stopped, every cluster's network
    namespace (its veth, the pod address on ``lo``) destroyed and the ``unreachable`` routes removed,
    each step whatever the one before raised (logged), to the end also when cancelled meanwhile (the
    first Ctrl-C under ``asyncio.run``), the cancellation raised after (``stop_to_the_end``; review
    s14-stops M1: a cancel landing in the relay's or a cluster's stop ended the cleanup there, the other
    clusters left running and the namespaces, veths, addresses and routes left on the host). The host
    state is removed in a ``finally`` (no awaits): also when the stop is itself cut (asyncio.run's end
    cancels one left running past its limit)."""
    limit = STOP_LIMIT_S + _PROC_STOP_S * (1 + sum(len(c.procs) for c in clusters))
    await stop_to_the_end(_tear_down(relay, clusters, net), "the live bench's cleanup", log, limit)


async def _tear_down(relay: Proc | None, clusters: list[LiveCluster], net: int) -> None:
    try:
        if relay is not None:
            try:
                await relay.stop()
            except Exception:
                log.exception("stopping the delay relay failed")
        for c in clusters:
            try:
                await c.stop()
            except Exception:
                log.exception("cluster %s: stopping it failed", c.d.name)
    finally:
        for c in clusters:
            try:
                c.ns.destroy()
            except Exception:
                log.exception("cluster %s: destroying its network namespace failed", c.d.name)
        try:
            netns.unisolate(net)
        except Exception:
            log.exception(
                "removing the unreachable routes of 10.%d.0.0/16 and 10.%d.0.0/16 failed", net, net + 1
            )


# --- main ------------------------------------------------------------------------------------------
async def run(cfg: LiveConfig, policies: list[str], phases: list[str], out: Path, command: str,
              log_dir: Path) -> int:  # fmt: skip
    log = sys.stdout
    net = netns.free_net()
    clusters = [LiveCluster(d, k + 1, net, cfg, log_dir) for k, d in enumerate(cfg.clusters)]
    relay: Proc | None = None
    t_begin = time.perf_counter()
    try:
        netns.isolate(net)
        for c in clusters:
            c.ns.create()
        for c in clusters:
            await c.start()
        await asyncio.gather(*(c.wait_ready() for c in clusters))
        relay = await start_relay(clusters)
        print(f"fleet up in {time.perf_counter() - t_begin:.0f} s (10.{net}.0.0/16, namespaces "
              f"{', '.join(c.ns.ns for c in clusters)})", file=log, flush=True)  # fmt: skip
        doc = {
            "local": LOCAL,
            "ttl_s": cfg.ttl_s,
            "refresh_s": cfg.refresh_s,
            "clusters": [c.spec(i) for i, c in enumerate(clusters)],
        }
        clusters_file = log_dir / "clusters.yaml"
        clusters_file.write_text(yaml.safe_dump(doc))
        caps = await measure_capacity(clusters, cfg)
        total = sum(caps.values())
        qps = cfg.load * total
        print(f"live capacity (req/s): {', '.join(f'{k} {v:.2f}' for k, v in caps.items())}; total "
              f"{total:.2f}; offered {qps:.2f} ({cfg.load:.0%})", file=log, flush=True)  # fmt: skip
        rows = []
        for phase in phases:
            for pol in policies:
                rows.append(await run_policy(pol, phase, qps, clusters, cfg, clusters_file, log))
    finally:
        await tear_down(relay, clusters, net)
    meta: dict[str, Any] = {
        "command": command,
        "clusters": [asdict(d) for d in cfg.clusters],
        "time_scale": cfg.time_scale,
        "capacity_req_per_s": caps,
        "load": cfg.load,
        "qps": qps,
        "duration_s": cfg.duration,
        "warmup_s": cfg.warmup,
        "slo_ttft": cfg.slo_ttft,
        "ttl_s": cfg.ttl_s,
        "refresh_s": cfg.refresh_s,
        "workload": asdict(cfg.workload),
        "seed": cfg.seed,
        "gateways": cfg.gateways,
        "gateway_seeds": [gateway_seed(cfg.seed, g) for g in range(cfg.gateways)],
        "rtt": "emulated by kvgate.bench.delay_relay (userspace; the kernel has no netem qdisc)",
        "wall_s_total": time.perf_counter() - t_begin,
    }
    meta["ttft_floor_s"] = ttft_floors(rows)
    for phase in PHASES:
        rs = {r["policy"]: r for r in rows if r["phase"] == phase}
        if "kvgate" in rs and "llm-d-hub" in rs:
            meta[f"{phase}_p90_ratio_vs_llm_d_hub"] = _ratio(
                rs["kvgate"]["ttft_p90"], rs["llm-d-hub"]["ttft_p90"]
            )
    write_report(out, rows, meta, cfg, log)
    return 0


def write_report(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], cfg: LiveConfig,
                 log: TextIO) -> None:  # fmt: skip
    """The JSON, the table and the plots, then a ``wrote ...`` line naming each file written."""
    written = [out / "multicluster-live.json", out / "multicluster-live-table.md"]
    written[0].write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    written[1].write_text(table + "\n")
    print(table, file=log)
    for k, v in meta.items():
        if k.endswith("ratio_vs_llm_d_hub") and v is not None:
            print(f"{k}: {v:.2f}", file=log)
    floors = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in meta["ttft_floor_s"].items())
    print(f"TTFT floor (5th percentile of answered TTFTs, all runs): {floors}", file=log)
    print(f"total wall time {meta['wall_s_total']:.0f} s", file=log)
    try:
        plot(out / "multicluster-live.png", rows)
        written.append(out / "multicluster-live.png")
        names = [d.name for d in cfg.clusters]
        if plot_timeline(out / "multicluster-live-loss.png", rows, names, cfg.request_timeout):
            written.append(out / "multicluster-live-loss.png")
    except ImportError as e:
        print(f"plot skipped: {e}", file=sys.stderr)
    wrote(*written, file=log)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog=prog("kvgate.bench.multicluster", "bench multicluster") + " --live",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--live", action="store_true", help="(selects this benchmark)")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument(
        "--load", type=positive_number, default=0.8, help="offered load, fraction of the measured capacity"
    )
    p.add_argument("--duration", type=positive_number, default=30.0, help="measured wall seconds per run")
    p.add_argument("--warmup", type=nonneg_number, default=12.0, help="wall seconds sent first, not measured")
    p.add_argument(
        "--time-scale", type=positive_number, default=0.05, help="simulated replicas' speed vs real time"
    )
    p.add_argument("--probe", type=positive_number, default=30.0, help="capacity probe, wall seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-loss", action="store_true", help="skip the cluster-loss phase")
    p.add_argument(
        "--phases",
        default="steady,loss",
        help=f"comma-separated, of {', '.join(PHASES)} (partition: west's link cut, then healed)",
    )
    p.add_argument(
        "--gateways", type=positive_int, default=1, help="global gateways (processes), arrivals split"
    )
    add_out(p, "multicluster", "multicluster-live.json, -table.md, .png, -loss.png")
    args = p.parse_args(argv)
    policies = args.policies.split(",")
    from kvgate.multicluster.policies import POLICIES as KNOWN

    bad = [x for x in policies if x not in KNOWN]
    if bad:
        print(
            f"kvgate bench multicluster --live: unknown policy {bad[0]!r} ({', '.join(KNOWN)})",
            file=sys.stderr,
        )
        return 2
    phases = [x for x in args.phases.split(",") if x and not (args.no_loss and x == "loss")]
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        print(f"kvgate bench multicluster --live: unknown phase {bad[0] if bad else '(none)'!r} "
              f"({', '.join(PHASES)})", file=sys.stderr)  # fmt: skip
        return 2
    why = netns.unavailable()
    if why is not None:
        print(f"kvgate bench multicluster --live: cannot create network namespaces: {why}", file=sys.stderr)
        return 2
    cfg = LiveConfig(load=args.load, duration=args.duration, warmup=args.warmup, time_scale=args.time_scale,
                     probe_s=args.probe, seed=args.seed, gateways=max(1, args.gateways))  # fmt: skip
    command = "kvgate bench multicluster " + " ".join(argv or ["--live"])
    log_dir = Path(tempfile.mkdtemp(prefix="kvgate-mclive-"))  # the clusters file
    args.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(cfg, policies, phases, args.out, command, log_dir))
