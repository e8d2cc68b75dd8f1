"""``kvgate bench multicluster``: clusters as candidates, on the fleet simulator's virtual clock.

Three clusters of different sizes, GPUs and distances from the global gateways (by default ``east``: 2 x
H100 at 5 ms, ``west``: 2 x H200 at 40 ms, ``eu``: 4 x A100 at 80 ms round trip), each with its own real
kvgate ``Director`` over simulated vLLM engines, its metrics scraped every 50 ms and its pool aggregate
(``kvgate.datalayer.aggregate``, Bloom prefix summary included) fetched by each global gateway every
``refresh`` seconds, arriving one round trip later. Two global gateways in ``east`` split the arrivals
and each runs the cluster policy under test (``kvgate.multicluster.policies``) with its own view: what it
sent since the last snapshot, its own failure back-off. A request pays the round trip to its cluster (TTFT
= RTT + the cluster's own TTFT); a request sent to a dead cluster costs the connect timeout, then goes to
the next cluster in the policy's order (the router's failover).

Workload: 256 shared-prefix tenants (a 4,096-token system prompt each, Zipf(0.5)-popular: together more
than one cluster's KV cache holds), 128-token questions, 128 output tokens; Poisson arrivals at ``--load``
x the fleet's measured capacity (one replica of each GPU profile offered 400 req/s of the same workload,
completions counted; times the replica counts).

Phases: ``steady`` (all clusters up) and ``loss`` (``west`` dies at a third of the window: requests there
that have not started come back to the gateway and are retried elsewhere, streams already started are cut;
it comes back at two thirds). ``lost`` counts requests that never started anywhere; ``cut`` counts streams
cut mid-response by the loss (no gateway can save those).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvgate.bench.outdir import add_out, wrote
from kvgate.bench.report import Collector
from kvgate.bench.workloads import RequestSpec, poisson_offsets, shared_prefix_stream
from kvgate.datalayer.endpoint import Endpoint
from kvgate.entry import ArgumentParser, positive_number, prog
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.policies import POLICIES, ClusterRequest, Policy, make_policy, prompt_key
from kvgate.multicluster.state import ClusterState
from kvgate.openai.request import COMPLETIONS, ParsedBody, RequestPolicy, inference_request
from kvgate.scheduling.types import SchedulingError, Usage
from kvgate.sim.types import SimRequest

BASELINES = ["llm-d-hub", "round-robin", "active-passive"]


@dataclass(frozen=True, slots=True)
class ClusterDef:
    name: str
    profile: str
    replicas: int
    rtt_ms: float
    gpu: str


DEFAULT_CLUSTERS = (
    ClusterDef("east", "llama3-8b-h100", 2, 5.0, "H100"),
    ClusterDef("west", "llama3-8b-h200", 2, 40.0, "H200"),
    ClusterDef("eu", "llama3-8b-a100", 4, 80.0, "A100"),
)
LOCAL = "east"
LOST_CLUSTER = "west"


@dataclass(slots=True)
class Workload:
    tenants: int = 256
    system_prompt_len: int = 4096
    question_len: int = 128
    output_len: int = 128
    zipf: float = 0.5

    def stream(self, seed: int, count: int) -> Iterator[RequestSpec]:
        return shared_prefix_stream(
            num_groups=self.tenants,
            system_prompt_len=self.system_prompt_len,
            question_len=self.question_len,
            output_len=self.output_len,
            count=count,
            seed=seed,
            zipf=self.zipf,
        )


@dataclass(slots=True)
class RunConfig:
    policy: str
    qps: float
    duration: float = 60.0
    warmup: float = 10.0
    refresh: float = 1.0
    ttl: float = 2.0
    connect_timeout: float = 1.0
    gateways: int = 2
    slo_ttft: float = 1.0
    loss: bool = False
    seed: int = 0
    clusters: tuple[ClusterDef, ...] = DEFAULT_CLUSTERS
    workload: Workload = field(default_factory=Workload)
    drain: float = 60.0


class _Cluster:
    def __init__(self, d: ClusterDef, clock: Any, on_first: Any, on_done: Any, seed: int) -> None:
        from kvgate.config.director import build_director
        from kvgate.config.policies import policy_config
        from kvgate.datalayer.store import EndpointStore
        from kvgate.multicluster.export import aggregate_source
        from kvgate.sim.engine import Engine, EngineConfig
        from kvgate.sim.vclock import VirtualReplica

        self.d = d
        self.alive = True
        self.endpoints = [
            Endpoint(f"{d.name}-{i}:8000", pool=d.name, labels={"kvgate.io/gpu": d.gpu})
            for i in range(d.replicas)
        ]
        self.store = EndpointStore(self.endpoints)
        self.director = build_director(policy_config("kvgate"), self.store, clock=clock.time, seed=seed)
        self.replicas = [
            VirtualReplica(
                clock,
                Engine(EngineConfig(profile=d.profile)),
                name=ep.address,
                on_first_token=on_first,
                on_finished=on_done,
            )
            for ep in self.endpoints
        ]
        self.source = aggregate_source(
            d.name, self.store.all, self.director, clock=clock.time, wall=clock.time
        )

    def scrape(self, now: float) -> None:
        from kvgate.bench.fleetsim import _copy_stats

        for ep, rep in zip(self.endpoints, self.replicas, strict=True):
            _copy_stats(ep, rep.engine.stats(), now)


@dataclass(slots=True)
class _Req:
    spec: RequestSpec
    rid: str
    start: float
    gateway: int
    order: list[str]
    attempt: int = 0
    cluster: str = ""
    replica: int = -1
    req: Any = None
    first: float | None = None
    token: int = 0  # the gateway's first-byte wait for this attempt (ClusterState.dispatched)
    sent: float = 0.0  # this attempt's dispatch: the gateway's TTFT evidence runs from here, as the router's
    # The policy's request from its order: its expectations per cluster (ClusterRequest.note).
    creq: ClusterRequest = field(default_factory=ClusterRequest)
    measured: bool = True
    phase: str = "steady"


class MultiClusterSim:
    def __init__(self, cfg: RunConfig) -> None:
        from kvgate.sim.vclock import VirtualClock

        self.cfg = cfg
        self.clock = VirtualClock()
        self.rng = random.Random(cfg.seed)
        self.clusters = {
            d.name: _Cluster(d, self.clock, self._first, self._done, cfg.seed) for d in cfg.clusters
        }
        self.gw_states: list[dict[str, ClusterState]] = []
        self.gw_policies: list[Policy] = []
        for g in range(cfg.gateways):
            states = {
                d.name: ClusterState(
                    ClusterSpec(d.name, gateway=f"{d.name}-gw:80", rtt_ms=d.rtt_ms, priority=i), quiet=True
                )
                for i, d in enumerate(cfg.clusters)
            }
            self.gw_states.append(states)
            self.gw_policies.append(
                make_policy(cfg.policy, ttl_s=cfg.ttl, local=LOCAL, seed=cfg.seed * 31 + g)
            )
        self.live: dict[str, _Req] = {}
        self.collectors = {
            "steady": Collector(slo_ttft=cfg.slo_ttft),
            "loss": Collector(slo_ttft=cfg.slo_ttft),
        }
        self.served_by: dict[str, dict[str, int]] = {"steady": {}, "loss": {}}
        self.lost: dict[str, int] = {"steady": 0, "loss": 0}
        self.cut: dict[str, int] = {"steady": 0, "loss": 0}
        self.retries: dict[str, int] = {"steady": 0, "loss": 0}
        self._policy_req: dict[str | None, RequestPolicy] = {}
        self.end = cfg.warmup + cfg.duration
        self.loss_at = cfg.warmup + cfg.duration / 3 if cfg.loss else None
        self.back_at = cfg.warmup + 2 * cfg.duration / 3 if cfg.loss else None
        self.timeline: list[tuple[float, str, float]] = []  # (t, cluster, ttft) of measured requests

    # --- arrivals and routing --------------------------------------------------------------------
    def _arrive(self, spec: RequestSpec, n: int) -> None:
        t = self.clock.now
        g = self.rng.randrange(self.cfg.gateways)
        creq = ClusterRequest(spec.target_model, prompt_key(None, spec.prompt_ids))
        order = [c.name for c in self.gw_policies[g].order(list(self.gw_states[g].values()), creq, t)]
        r = _Req(spec, f"r{n}", t, g, order, measured=t >= self.cfg.warmup, creq=creq)
        r.phase = "loss" if self.loss_at is not None else "steady"
        self.live[r.rid] = r
        self._attempt(r)

    def _attempt(self, r: _Req) -> None:
        if r.attempt >= len(r.order):
            self.live.pop(r.rid, None)
            if r.measured:
                self.lost[r.phase] += 1
                self._record_failure(r, "lost")
            return
        name = r.order[r.attempt]
        st = self.gw_states[r.gateway][name]
        c = self.clusters[name]
        if r.attempt:
            self.retries[r.phase] += r.measured
        if not c.alive:
            # Connect timeout, then the next cluster; the gateway backs off from this one.
            st.failed(self.clock.now + self.cfg.connect_timeout)
            r.attempt += 1
            self.clock.call_later(self.cfg.connect_timeout, self._attempt, r)
            return
        # Streamed: waits for its first byte.
        # (usage: the answer's cached tokens come with its end, as a streamed usage event does.)
        r.token = st.dispatched(self.clock.now, note=r.creq.note(name), usage=True)
        r.sent = self.clock.now
        r.cluster = name
        self.clock.call_later(c.d.rtt_ms / 2000.0, self._at_cluster, r)

    def _at_cluster(self, r: _Req) -> None:
        c = self.clusters[r.cluster]
        st = self.gw_states[r.gateway][r.cluster]
        if not c.alive:
            st.finished(r.token)
            st.failed(self.clock.now)
            r.attempt += 1
            self.clock.call_later(c.d.rtt_ms / 2000.0, self._attempt, r)
            return
        spec = r.spec
        # Token ids, no text: both the cluster's prefix scorer and the gateways hash the ids' bytes.
        body = ParsedBody(
            COMPLETIONS,
            {},
            spec.target_model,
            token_ids=spec.prompt_ids,
            max_tokens=spec.max_tokens,
            prompt_tokens=len(spec.prompt_ids),
        )
        pol = self._policy_req.setdefault(spec.lora, RequestPolicy())
        r.req = inference_request(
            body, request_id=r.rid, model=spec.target_model, policy=pol, arrival_time=self.clock.now
        )
        try:
            ep = c.director.pick(r.req).primary
        except SchedulingError:
            st.finished(r.token)
            r.attempt += 1
            self.clock.call_later(c.d.rtt_ms / 2000.0, self._attempt, r)
            return
        c.director.on_dispatched(r.req, ep)
        r.replica = c.endpoints.index(ep)
        c.replicas[r.replica].submit(
            SimRequest(
                request_id=r.rid,
                prompt_token_ids=spec.prompt_ids,
                max_tokens=spec.max_tokens,
                arrival_time=self.clock.now,
            )
        )

    def _first(self, sim: SimRequest, t: float) -> None:
        r = self.live.get(sim.request_id)
        if r is None:
            return
        r.first = t
        c = self.clusters[r.cluster]
        # The gateway sees the first byte half an RTT later: its observed TTFT for this cluster, from this
        # attempt's dispatch (as the router measures it: not the connect timeouts of earlier attempts).
        self.gw_states[r.gateway][r.cluster].observe_ttft(t - r.sent + c.d.rtt_ms / 2000.0, t, r.token)
        c.director.on_first_token(r.req, c.endpoints[r.replica])

    def _done(self, sim: SimRequest, t: float) -> None:
        r = self.live.pop(sim.request_id, None)
        if r is None or sim.finish_reason == "abort":
            return
        c = self.clusters[r.cluster]
        ok = r.first is not None
        c.director.on_finished(
            r.req,
            c.endpoints[r.replica],
            Usage(sim.num_prompt_tokens, len(sim.output_token_ids), sim.num_cached_tokens),
            ok,
        )
        share = sim.num_cached_tokens / sim.num_prompt_tokens if sim.num_prompt_tokens else None
        self.gw_states[r.gateway][r.cluster].finished(r.token, t, cached=share)
        if not r.measured or r.first is None:
            return
        half_rtt = c.d.rtt_ms / 2000.0
        ttft = r.first - r.start + half_rtt
        self.collectors[r.phase].add(
            start=r.start,
            ok=True,
            ttft=ttft,
            e2e=t - r.start + half_rtt,
            prompt_tokens=sim.num_prompt_tokens,
            completion_tokens=len(sim.output_token_ids),
            cached_tokens=sim.num_cached_tokens,
        )
        by = self.served_by[r.phase]
        by[r.cluster] = by.get(r.cluster, 0) + 1
        self.timeline.append((r.start, r.cluster, ttft))

    def _record_failure(self, r: _Req, error: str) -> None:
        self.collectors[r.phase].add(
            start=r.start, ok=False, ttft=None, e2e=None, prompt_tokens=0, completion_tokens=0, error=error
        )

    # --- the cluster loss -------------------------------------------------------------------------
    def _lose(self, name: str) -> None:
        c = self.clusters[name]
        c.alive = False
        for r in [r for r in self.live.values() if r.cluster == name and r.replica >= 0]:
            c.replicas[r.replica].abort(r.rid)
            c.director.on_finished(r.req, c.endpoints[r.replica], None, False)
            self.gw_states[r.gateway][name].finished(r.token)
            if r.first is not None:  # started: the client's stream is cut, nobody can retry it
                self.live.pop(r.rid, None)
                if r.measured:
                    self.cut[r.phase] += 1
                    self._record_failure(r, "cut")
                continue
            # Not started: the connection resets, the gateway retries on the next cluster in its order.
            r.replica = -1
            r.attempt += 1
            self.clock.call_later(c.d.rtt_ms / 2000.0, self._attempt, r)

    def _restore(self, name: str) -> None:
        from kvgate.sim.engine import Engine, EngineConfig

        c = self.clusters[name]
        c.alive = True
        for rep in c.replicas:  # a fresh start: empty caches
            rep.engine = Engine(EngineConfig(profile=c.d.profile))

    # --- periodic: scrapes, aggregate fetches, EPP health ----------------------------------------
    def _scrape(self) -> None:
        now = self.clock.now
        for c in self.clusters.values():
            if c.alive:
                c.scrape(now)
        if self.live or now < self.end:
            self.clock.call_later(0.05, self._scrape)

    def _fetch(self, g: int) -> None:
        now = self.clock.now
        for name, c in self.clusters.items():
            st = self.gw_states[g][name]
            if not c.alive:
                st.healthy = False  # the gRPC health check fails too
                continue
            snap = c.source.snapshot()
            self.clock.call_later(c.d.rtt_ms / 1000.0, self._deliver, st, snap)
        if self.live or now < self.end:
            self.clock.call_later(self.cfg.refresh, self._fetch, g)

    def _deliver(self, st: ClusterState, snap: Any) -> None:
        st.set_aggregate(snap, self.clock.now)
        st.healthy = True

    # --- run -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        count = int(cfg.qps * self.end * 1.3) + 50
        specs = cfg.workload.stream(cfg.seed, count)
        offsets = poisson_offsets(random.Random(cfg.seed + 1), cfg.qps, count)
        for n, (spec, at) in enumerate(zip(specs, offsets, strict=False)):
            if at > self.end:
                break
            self.clock.call_at(at, self._arrive, spec, n)
        self.clock.call_at(0.0, self._scrape)
        for g in range(cfg.gateways):  # the gateways' refreshes are not in phase
            self.clock.call_at(cfg.refresh * g / cfg.gateways, self._fetch, g)
        if self.loss_at is not None and self.back_at is not None:
            self.clock.call_at(self.loss_at, self._lose, LOST_CLUSTER)
            self.clock.call_at(self.back_at, self._restore, LOST_CLUSTER)
        t0 = time.perf_counter()
        self.clock.run_until(self.end + cfg.drain)
        phase = "loss" if cfg.loss else "steady"
        for r in self.live.values():  # never finished within the drain
            if r.measured:
                self.lost[phase] += 1
        col = self.collectors[phase]
        row = col.summary(duration=cfg.duration)
        served = self.served_by[phase]
        total = sum(served.values())
        row.update(
            {
                "policy": cfg.policy,
                "phase": phase,
                "qps": cfg.qps,
                "lost": self.lost[phase],
                "cut": self.cut[phase],
                "retries": self.retries[phase],
                "served_by": served,
                "cross_cluster_share": (1 - served.get(LOCAL, 0) / total) if total else None,
                "wall_s": time.perf_counter() - t0,
            }
        )
        return row


# --- capacity ---------------------------------------------------------------------------------------
def probe_capacity(d: ClusterDef, workload: Workload, seed: int, duration: float = 30.0) -> float:
    """Req/s one replica of ``d.profile`` serves when offered more than it can take (same workload)."""
    from kvgate.bench.fleetsim import FleetConfig, FleetSim, ReplicaSpec

    warm = 5.0
    qps = 400.0  # far more than one replica takes
    cfg = FleetConfig(
        replicas=[ReplicaSpec(d.profile, 1)],
        policy="round-robin",
        qps=qps,
        duration=duration,
        warmup=warm,
        drain=0.0,
        seed=seed,
        max_requests=int(qps * (duration + warm) * 1.3) + 50,
    )
    res = FleetSim(cfg, workload.stream(seed, cfg.max_requests)).run()
    t_from = warm + duration / 4
    return sum(1 for t in res.done_times if t >= t_from) / (warm + duration - t_from)


def fleet_capacity(clusters: tuple[ClusterDef, ...], workload: Workload, seed: int) -> dict[str, float]:
    per_profile: dict[str, float] = {}
    out: dict[str, float] = {}
    for d in clusters:
        if d.profile not in per_profile:
            per_profile[d.profile] = probe_capacity(d, workload, seed)
        out[d.name] = per_profile[d.profile] * d.replicas
    return out


# --- report ---------------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def rows_vs_hub(rows: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], float | None]]:
    """``(phase, row, p90 / llm-d-hub's p90 in that phase)`` for the report tables, steady phase first
    (shared by this simulator's report and ``kvgate bench multicluster-live``'s)."""
    for phase in ("steady", "loss", "partition"):
        rs = [r for r in rows if r["phase"] == phase]
        hub = next((r for r in rs if r["policy"] == "llm-d-hub"), None)
        for r in rs:
            yield phase, r, _ratio(r["ttft_p90"], hub["ttft_p90"] if hub else None)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "| phase | policy | TTFT p50 (ms) | TTFT p90 (ms) | p90 / llm-d-hub | goodput (req/s, TTFT < "
        f"{meta['slo_ttft']:.1f} s) | cross-cluster share | lost | cut | retries | served east/west/eu |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, r, ratio in rows_vs_hub(rows):
        by = r["served_by"]
        lines.append(
            f"| {phase} | {r['policy']} | {r['ttft_p50'] * 1000:.0f} | {r['ttft_p90'] * 1000:.0f} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} | {r['goodput_req_per_s']:.1f} | "
            f"{r['cross_cluster_share']:.2f} | {r['lost']} | {r['cut']} | {r['retries']} | "
            f"{by.get('east', 0)}/{by.get('west', 0)}/{by.get('eu', 0)} |"
        )
    return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    plot_ttft_bars(path, rows, ("steady", "loss"), "TTFT (ms)", "{phase}: TTFT by cluster policy")


def plot_ttft_bars(
    path: Path, rows: list[dict[str, Any]], phases: Sequence[str], ylabel: str, title: str
) -> None:
    """One panel per phase: each policy's TTFT p50 and p90 bars (log scale); ``title`` is formatted
    with ``phase``. Rows without a p90 (nothing served) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        rs = [r for r in rows if r["phase"] == phase and r["ttft_p90"] is not None]
        x = range(len(rs))
        ax.bar([i - 0.2 for i in x], [r["ttft_p50"] * 1000 for r in rs], 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r["ttft_p90"] * 1000 for r in rs], 0.4, label="p90")
        ax.set_xticks(list(x), [r["policy"] for r in rs], rotation=15)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title.format(phase=phase))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timeline(path: Path, sims: dict[str, MultiClusterSim], loss_at: float, back_at: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes2 = plt.subplots(len(sims), 1, figsize=(10, 2.3 * len(sims)), sharex=True, squeeze=False)
    axes = axes2[:, 0]  # (one policy: an array still, not a lone Axes)
    colours = {"east": "tab:blue", "west": "tab:orange", "eu": "tab:green"}
    for ax, (name, sim) in zip(axes, sims.items(), strict=True):
        for cl, col in colours.items():
            pts = [(t, v * 1000) for t, c, v in sim.timeline if c == cl]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=2, c=col, label=cl)
        ax.axvspan(loss_at, back_at, color="grey", alpha=0.15)
        ax.set_yscale("log")
        ax.set_ylabel("TTFT (ms)")
        ax.set_title(f"{name}: where requests went and their TTFT (grey: west lost)", fontsize=9)
    axes[0].legend(loc="upper right", markerscale=4, fontsize=8)
    axes[-1].set_xlabel("arrival (virtual s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    # (``python -m``: ``sys.argv``; ``--live`` was looked for in ``[]`` and the fleet simulator ran instead)
    argv = sys.argv[1:] if argv is None else argv
    if "--live" in argv:  # the same comparison live, in network namespaces
        from kvgate.bench import multicluster_live

        return multicluster_live.main(argv)
    p = ArgumentParser(
        prog=prog("kvgate.bench.multicluster", "bench multicluster"), description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--live", action="store_true", help="run live in network namespaces (root; see --live -h)")
    p.add_argument("--policies", default=",".join(["kvgate", *BASELINES]))
    p.add_argument(
        "--load", type=positive_number, default=0.8, help="offered load as a fraction of fleet capacity"
    )
    p.add_argument("--duration", type=positive_number, default=40.0, help="virtual seconds measured per run")
    p.add_argument("--quick", action="store_true", help="20 s runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-loss", action="store_true", help="skip the cluster-loss phase")
    add_out(p, "multicluster", "multicluster.json, -table.md, .png, -loss.png")
    args = p.parse_args(argv)
    policies = args.policies.split(",")
    for pol in policies:
        if pol not in POLICIES:
            print(
                f"kvgate bench multicluster: unknown policy {pol!r} ({', '.join(POLICIES)})", file=sys.stderr
            )
            return 2
    duration = 20.0 if args.quick else args.duration
    workload = Workload()
    caps = fleet_capacity(DEFAULT_CLUSTERS, workload, args.seed)
    total = sum(caps.values())
    qps = args.load * total
    print(
        f"capacity (req/s): {', '.join(f'{k} {v:.1f}' for k, v in caps.items())}; total {total:.1f}; "
        f"offered {qps:.1f} ({args.load:.0%})",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    loss_sims: dict[str, MultiClusterSim] = {}
    phases = [False] if args.no_loss else [False, True]
    for loss in phases:
        for pol in policies:
            sim = MultiClusterSim(
                RunConfig(pol, qps, duration=duration, loss=loss, seed=args.seed, workload=workload)
            )
            row = sim.run()
            rows.append(row)
            if loss:
                loss_sims[pol] = sim
            print(
                f"{row['phase']:<6} {pol:<15} p50 {row['ttft_p50'] * 1000:7.0f} ms  p90 "
                f"{row['ttft_p90'] * 1000:7.0f} ms  goodput {row['goodput_req_per_s']:5.1f}/s  cross "
                f"{row['cross_cluster_share']:.2f}  lost {row['lost']}  cut {row['cut']}  "
                f"({row['wall_s']:.0f} s)",
                flush=True,
            )
    meta = {
        "command": "kvgate bench multicluster" + (" --quick" if args.quick else ""),
        "clusters": [{s: getattr(d, s) for s in d.__slots__} for d in DEFAULT_CLUSTERS],
        "capacity_req_per_s": caps,
        "load": args.load,
        "qps": qps,
        "duration_s": duration,
        "slo_ttft": RunConfig("kvgate", qps).slo_ttft,
        "workload": {s: getattr(workload, s) for s in workload.__slots__},
        "seed": args.seed,
    }
    for phase in ("steady", "loss"):
        rs = {r["policy"]: r for r in rows if r["phase"] == phase}
        if "kvgate" in rs and "llm-d-hub" in rs:
            meta[f"{phase}_p90_ratio_vs_llm_d_hub"] = _ratio(
                rs["kvgate"]["ttft_p90"], rs["llm-d-hub"]["ttft_p90"]
            )
    suffix = "-quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"multicluster{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (args.out / f"multicluster{suffix}-table.md").write_text(table + "\n")
    print(table)
    for k, v in meta.items():
        if k.endswith("ratio_vs_llm_d_hub") and v is not None:
            print(f"{k}: {v:.2f}")
    written = [args.out / f"multicluster{suffix}.json", args.out / f"multicluster{suffix}-table.md"]
    try:
        plot(args.out / f"multicluster{suffix}.png", rows)
        written.append(args.out / f"multicluster{suffix}.png")
        if loss_sims:
            any_sim = next(iter(loss_sims.values()))
            assert any_sim.loss_at is not None and any_sim.back_at is not None
            plot_timeline(
                args.out / f"multicluster{suffix}-loss.png", loss_sims, any_sim.loss_at, any_sim.back_at
            )
            written.append(args.out / f"multicluster{suffix}-loss.png")
    except ImportError as e:
        print(f"plots skipped: {e}", file=sys.stderr)
    wrote(*written)
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    raise SystemExit(main())
