"""Fleet-scale benchmark on a virtual clock: the REAL picker in front of the simulator's engine model.

A discrete-event run on ``kvgate.sim.vclock`` (no sockets, no sleeping) with three kinds of events:
- an arrival: build an ``InferenceRequest``, ``Director.pick`` it (virtual clock injected), then
  ``on_dispatched`` and hand a ``SimRequest`` with the same token ids to the chosen replica's engine;
- a replica's step end: deliver the step's tokens (``on_first_token``, ``on_finished`` with usage),
  then start the next step if the engine still has work;
- a scrape: copy each engine's ``stats()`` into its endpoint's metrics, stamped with the virtual
  time, every ``scrape_interval`` (50 ms by default, as the reference scrapes), so the picker sees
  metrics exactly as stale as it would in production, while its own in-flight accounting is exact;
- a KV-event delivery: when the policy has a ``precise-prefix-cache-scorer``, each engine's KV-cache
  events reach that scorer's block index ``kv_event_delay`` after the step that produced them (the
  ZMQ hop in production), so precise routing is measured with event lag too.

``bypass_fraction`` sends that share of arrivals straight to a random replica, around the picker (another
gateway replica, a batch job, direct clients): the engines cache and evict for them, the picker sees them
only through scraped metrics and KV events. They are left out of the latency figures (the hit rate is the
engines' own, so it covers them).

Deterministic per seed: seeded RNGs for arrivals and workloads, the picker built with the same seed
for its tie-breaks, and the virtual clock's heap ordered by (time, sequence number).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvgate.bench.report import Collector
from kvgate.bench.workloads import RequestSpec, poisson_offsets
from kvgate.datalayer.endpoint import Endpoint
from kvgate.openai.request import COMPLETIONS, ParsedBody, RequestPolicy, inference_request
from kvgate.scheduling.types import InferenceRequest, SchedulingError, Usage
from kvgate.sim.types import SimRequest


@dataclass(slots=True)
class ReplicaSpec:
    profile: str = "llama3-8b-h100"
    count: int = 1
    # Engine overrides (e.g. a smaller KV cache to scale a scenario down), passed to EngineConfig.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class FleetConfig:
    replicas: list[ReplicaSpec]
    policy: str = "kvgate"
    qps: float = 10.0
    duration: float = 60.0  # seconds of virtual arrivals (measured ones, after the warm-up)
    # Virtual seconds of traffic before the measured window: fills the prefix caches the way a
    # long-running fleet has them; its requests and cache counters are left out of the figures.
    warmup: float = 0.0
    max_requests: int = 100_000
    drain: float = 120.0  # virtual seconds allowed after the last arrival before the rest count as lost
    scrape_interval: float = 0.050
    sample_interval: float = 0.5  # load-over-time samples
    slo_ttft: float = 2.0
    seed: int = 0
    model: str = "sim-model"
    kv_event_delay: float = 0.002  # virtual seconds from an engine step to its KV events in the index
    bypass_fraction: float = 0.0  # share of arrivals sent to a random replica around the picker


@dataclass(slots=True)
class _Live:
    req: InferenceRequest
    sim: SimRequest
    replica: Any  # VirtualReplica
    index: int
    start: float
    measured: bool = True
    bypass: bool = False  # sent around the picker: no director callbacks, not in the figures
    first: float | None = None
    last: float | None = None


def _make_engines(cfg: FleetConfig, sink_for: Callable[[int], Any] | None = None) -> list[Any]:
    from kvgate.sim.engine import Engine, EngineConfig

    engines: list[Any] = []
    for spec in cfg.replicas:
        for _ in range(spec.count):
            sink = sink_for(len(engines)) if sink_for is not None else None
            engines.append(Engine(EngineConfig(profile=spec.profile, **spec.overrides), kv_event_sink=sink))
    return engines


def _replica_count(cfg: FleetConfig) -> int:
    return sum(spec.count for spec in cfg.replicas)


def _precise_indexes(director: Any) -> list[Any]:
    """The block indexes of the policy's precise prefix scorers (none for the other policies)."""
    from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer

    found: list[Any] = []
    for plugin in director.handle.plugins.values():
        if isinstance(plugin, PrecisePrefixCacheScorer) and plugin.index not in found:
            found.append(plugin.index)
    return found


def _make_director(policy: str, endpoints: list[Endpoint], clock: Callable[[], float], seed: int) -> Any:
    from kvgate.bench.precise import PRECISE_POLICIES, precise_policy_config
    from kvgate.config.director import build_director
    from kvgate.config.policies import POLICIES, policy_config
    from kvgate.datalayer.store import EndpointStore

    # A named policy, or a path to an EndpointPickerConfig YAML (to try a tuned profile).
    if policy in POLICIES:
        config: Any = policy_config(policy)
    elif policy in PRECISE_POLICIES:
        config = precise_policy_config(policy)
    else:
        config = Path(policy)
    # Metrics are refreshed every scrape interval on virtual time; the picker's own staleness rule
    # (2 s by default) applies to them exactly as in production.
    return build_director(config, EndpointStore(endpoints), clock=clock, seed=seed)


def _copy_stats(ep: Endpoint, stats: Any, now: float) -> None:
    m = ep.metrics
    m.waiting_queue_size = stats.num_waiting
    m.running_requests = stats.num_running
    m.kv_cache_usage = stats.kv_cache_usage
    m.block_size = stats.block_size
    m.num_gpu_blocks = stats.num_gpu_blocks
    m.max_lora = stats.max_loras
    m.running_loras = frozenset(stats.running_loras)
    m.waiting_loras = frozenset(stats.waiting_loras)
    m.updated_at = now


@dataclass(slots=True)
class FleetResult:
    row: dict[str, Any]
    collector: Collector
    per_replica_requests: list[int]
    # Completion times of every request, warm-up included (capacity probes count these).
    done_times: list[float]


class FleetSim:
    """One run: a fleet, a policy, a workload at a QPS. ``run()`` returns the summary row."""

    def __init__(self, cfg: FleetConfig, specs: Iterable[RequestSpec]) -> None:
        from kvgate.sim.vclock import VirtualClock, VirtualReplica

        self.cfg = cfg
        self.clock = VirtualClock()
        # adapter (or None) -> the request policy that names it (kvgate.openai.request, as both doors)
        self._policies: dict[str | None, RequestPolicy] = {}
        self._specs: Iterator[RequestSpec] = iter(specs)
        self._rng = random.Random(cfg.seed)
        # Its own stream, so the arrival times and the picker's tie-breaks do not depend on it.
        self._bypass_rng = random.Random(cfg.seed ^ 0x5EED)
        self.bypassed = 0
        self.endpoints = [
            Endpoint(address=f"10.0.{i // 256}.{i % 256}:8000") for i in range(_replica_count(cfg))
        ]
        self.replicas: list[Any] = []
        self.director = _make_director(cfg.policy, self.endpoints, self.clock.time, cfg.seed)
        self._kv_indexes = _precise_indexes(self.director)
        for index in self._kv_indexes:  # a shared index may hold an earlier run's blocks
            index.retain([])
        sink_for = self._kv_sink if self._kv_indexes else None
        for ep, eng in zip(self.endpoints, _make_engines(cfg, sink_for), strict=True):
            rep = VirtualReplica(
                self.clock,
                eng,
                name=ep.address,
                on_token=self._on_token,
                on_first_token=self._on_first_token,
                on_finished=self._on_finished,
            )
            self.replicas.append(rep)
        self._index = {id(ep): i for i, ep in enumerate(self.endpoints)}
        self._live: dict[str, _Live] = {}
        self.collector = Collector(slo_ttft=cfg.slo_ttft, seed=cfg.seed)
        self.per_replica = [0] * len(self.replicas)
        self.picks_failed = 0
        self._n = 0
        self._last_event = 0.0
        self._next_sample = 0.0
        self._progress: Callable[[float], None] | None = None
        self._offsets: Iterator[float] = iter(())
        self._base = (0, 0, 0)
        self.done_times: list[float] = []

    def _kv_sink(self, i: int) -> Callable[[list[Any]], None]:
        address = self.endpoints[i].address

        def deliver(events: list[Any]) -> None:
            for index in self._kv_indexes:
                index.apply(address, events)

        def sink(events: list[Any]) -> None:
            # The simulator's events are the data layer's own types (datalayer.kvwire): no conversion.
            self.clock.call_later(self.cfg.kv_event_delay, deliver, events)

        return sink

    # ---- events --------------------------------------------------------------------------------

    def _arrive(self, spec: RequestSpec) -> None:
        t = self.clock.now
        self._last_event = t
        rid = f"r{self._n}"
        self._n += 1
        self._queue_next_arrival()
        model = spec.target_model
        # The body a client would send, already parsed (the workload holds its text and token ids).
        body = ParsedBody(COMPLETIONS, {}, model, prompt_text=spec.prompt_text, token_ids=spec.prompt_ids,
                          max_tokens=spec.max_tokens, prompt_tokens=len(spec.prompt_ids))  # fmt: skip
        policy = self._policies.get(spec.lora)
        if policy is None:
            policy = self._policies[spec.lora] = RequestPolicy(frozenset({spec.lora} if spec.lora else ()))
        req = inference_request(
            body, request_id=rid, model=model, policy=policy, session=spec.session, arrival_time=t
        )
        if self.cfg.bypass_fraction > 0 and self._bypass_rng.random() < self.cfg.bypass_fraction:
            self._bypass(req, spec, t)
            return
        try:
            pick = self.director.pick(req)
        except SchedulingError as e:
            if t < self.cfg.warmup:
                return
            self.picks_failed += 1
            self.collector.add(
                start=t, ok=False, ttft=None, e2e=None, prompt_tokens=0, completion_tokens=0, error=e.code
            )
            return
        ep = pick.primary
        i = self._index[id(ep)]
        self.per_replica[i] += 1
        self.director.on_dispatched(req, ep)
        sim = SimRequest(
            request_id=rid,
            prompt_token_ids=spec.prompt_ids,
            max_tokens=spec.max_tokens,
            lora=spec.lora,
            arrival_time=t,
        )
        self._live[rid] = _Live(req, sim, self.replicas[i], i, t, measured=t >= self.cfg.warmup)
        self.replicas[i].submit(sim)

    def _bypass(self, req: InferenceRequest, spec: RequestSpec, t: float) -> None:
        i = self._bypass_rng.randrange(len(self.replicas))
        self.bypassed += 1
        sim = SimRequest(
            request_id=req.request_id,
            prompt_token_ids=spec.prompt_ids,
            max_tokens=spec.max_tokens,
            lora=spec.lora,
            arrival_time=t,
        )
        self._live[req.request_id] = _Live(req, sim, self.replicas[i], i, t, measured=False, bypass=True)
        self.replicas[i].submit(sim)

    def _on_first_token(self, sim: SimRequest, t: float) -> None:
        live = self._live.get(sim.request_id)
        if live is not None and not live.bypass:
            live.first = t
            ep = self.endpoints[live.index]
            self.director.on_first_token(live.req, ep)
            # The engine's cached prompt tokens are known at prefill: the picker hears them now, as
            # from a stream's usage, rather than after the whole decode.
            usage = Usage(sim.num_prompt_tokens, 0, sim.num_cached_tokens, cached_reported=True)
            self.director.on_usage(live.req, ep, usage)

    def _on_token(self, sim: SimRequest, _tok: int, t: float) -> None:
        live = self._live.get(sim.request_id)
        if live is None:
            return
        if live.last is not None and live.measured:
            self.collector.add_itl(t - live.last)
        live.last = t

    def _on_finished(self, sim: SimRequest, t: float) -> None:
        self._last_event = t
        self.done_times.append(t)
        live = self._live.pop(sim.request_id, None)
        if live is None or live.bypass:
            return
        ok = sim.finish_reason != "abort" and live.first is not None
        n_out = len(sim.output_token_ids)
        self.director.on_finished(
            live.req,
            self.endpoints[live.index],
            Usage(sim.num_prompt_tokens, n_out, sim.num_cached_tokens, cached_reported=True),
            ok,
        )
        if not live.measured:
            return
        self.collector.add(
            start=live.start,
            ok=ok,
            ttft=(live.first - live.start) if live.first is not None else None,
            e2e=t - live.start,
            prompt_tokens=sim.num_prompt_tokens,
            completion_tokens=n_out,
            cached_tokens=sim.num_cached_tokens,
            error=None if ok else "aborted",
        )

    def _scrape(self) -> None:
        t = self.clock.now
        for ep, rep in zip(self.endpoints, self.replicas, strict=True):
            _copy_stats(ep, rep.engine.stats(), t)
        if t >= self._next_sample and t >= self.cfg.warmup:
            self._sample_load()
            self._next_sample = t + self.cfg.sample_interval
            if self._progress is not None:
                self._progress(t)
        # Keep scraping while anything can still change.
        if self._live or t < self.cfg.warmup + self.cfg.duration:
            self.clock.call_later(self.cfg.scrape_interval, self._scrape)

    # ---- run -----------------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> FleetResult:
        cfg = self.cfg
        self._progress = progress
        self._offsets = poisson_offsets(self._rng, cfg.qps, cfg.max_requests)
        self.clock.call_at(cfg.warmup, self._mark_warm)
        # Arrivals are pulled lazily: only the next one sits in the heap (bounded memory).
        self._queue_next_arrival()
        self.clock.call_at(0.0, self._scrape)
        self.clock.run_until(cfg.warmup + cfg.duration + cfg.drain)
        lost = sum(1 for live in self._live.values() if live.measured)  # bypass ones are not measured
        for live in self._live.values():
            if not live.measured:
                continue
            self.collector.add(
                start=live.start,
                ok=False,
                ttft=None,
                e2e=None,
                prompt_tokens=0,
                completion_tokens=0,
                error="unfinished",
            )
        self._live.clear()
        totals, base = self._stats_totals(), self._base
        hits, queries = totals[0] - base[0], totals[1] - base[1]
        row = self.collector.summary(
            hit_rate=(hits / queries) if queries else None,
            extra={
                "policy": cfg.policy,
                "qps": cfg.qps,
                "replicas": len(self.replicas),
                "seed": cfg.seed,
                "unfinished": lost,
                "picks_failed": self.picks_failed,
                "preemptions": totals[2] - base[2],
                "virtual_s": self._last_event,
                "warmup_s": cfg.warmup,
                "max_replica_share": max(self.per_replica) / max(1, sum(self.per_replica)),
            },
        )
        if cfg.bypass_fraction > 0:
            row["bypassed"] = self.bypassed
        return FleetResult(row, self.collector, list(self.per_replica), self.done_times)

    def _queue_next_arrival(self) -> None:
        if self._n >= self.cfg.max_requests:
            return
        spec = next(self._specs, None)
        at = next(self._offsets, None)
        if spec is None or at is None:
            return
        if spec.at is not None:
            at = spec.at
        if at <= self.cfg.warmup + self.cfg.duration:
            self.clock.call_at(at, self._arrive, spec)

    def _mark_warm(self) -> None:
        # Cache counters from here on: hit rate over the measured window only.
        self._base = self._stats_totals()

    def _sample_load(self) -> None:
        queue, kv = [], []
        for ep in self.endpoints:
            m = ep.metrics
            queue.append(float(m.waiting_queue_size))
            kv.append(m.kv_cache_usage)
        self.collector.load.add(self.clock.now, queue, kv)

    def _stats_totals(self) -> tuple[int, int, int]:
        hits = queries = pre = 0
        for rep in self.replicas:
            s = rep.engine.stats()
            hits += s.prefix_cache_hits
            queries += s.prefix_cache_queries
            pre += s.num_preemptions
        return hits, queries, pre
