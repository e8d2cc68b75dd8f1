"""A pool's aggregate snapshot: what one cluster's kvgate tells a multi-cluster gateway about its pool.

Both front doors serve it at ``GET /v1/pool/aggregate`` (``kvgate serve``'s admin routes, ``kvgate epp``'s
metrics port) as JSON, and the reference names of the same numbers on ``/metrics``:
``inference_pool_average_{kv_cache_utilization,queue_size,running_requests}``, ``inference_pool_ready_pods``
and llm-d's ``llm_d_epp_{average,std_dev}_{kv_cache_utilization,queue_size,running_requests}``,
``llm_d_epp_ready_endpoints`` (label ``name``).

kvgate's own fields, because averages alone cannot rank clusters of different sizes and GPUs:
- ``ready_endpoints``: healthy endpoints with metrics fresher than ``staleness_s`` (never-scraped ones are
  not ready: unknown is not idle), and ``ready_by_gpu``;
- ``capacity`` = sum of ready endpoints' speed (GPU type -> relative throughput, H100 = 1), and
  ``headroom`` = sum of speed x (1 - load), load = requests there over the requests it holds when full;
- ``request_slots``: how many requests the ready endpoints hold when full, from what each reports: its
  KV cache holds ``running / kv_cache_usage`` requests of the current mix (``vllm:num_requests_running``
  over ``vllm:kv_cache_usage_perc``; the KV cache of ``vllm:cache_config_info``'s ``num_gpu_blocks``), at
  most ``MAX_BATCH`` (the decode batch at which compute, not memory, is the limit; vLLM does not export
  ``max_num_seqs``). An endpoint with no estimate yet (idle since start) counts ``MAX_BATCH``; a
  ``SlotMemory`` keeps each endpoint's last estimate while it idles;
- ``predicted_ttft_s``: a typical request's TTFT here now (queue ahead of it over the pool's speed);
- ``snapshot_time`` (wall clock, for other machines) and ``metrics_age_s`` (the oldest ready endpoint's
  scrape age, so a frozen scraper is visible);
- ``prefix_bloom``: a Bloom filter of the hot prefix block hashes (the approximate prefix index's, text
  blocks hashed as ``scheduling.prefix.block_hashes``), so a global gateway can send a prompt where its
  prefix is cached. Its size is capped so the whole response stays under ``MAX_RESPONSE_BYTES``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
from prometheus_client import Gauge

from kvgate.datalayer.endpoint import Endpoint

AGGREGATE_PATH = "/v1/pool/aggregate"
MAX_RESPONSE_BYTES = 256 * 1024
MAX_BLOOM_BITS = 1 << 20  # 128 KiB of bits, ~171 KiB in base64: the response stays under the cap
BLOOM_BITS_PER_ENTRY = 8  # ~2% false positives with k = 5
BLOOM_HASHES = 5
BLOOM_EVERY_S = 1.0  # the Bloom summary is rebuilt at most this often (the hot set moves slowly)
GPU_LABELS = ("kvgate.io/gpu", "nvidia.com/gpu.product", "cloud.google.com/gke-accelerator")
SPEED_LABEL = "kvgate.io/speed"
# Relative throughput per GPU (H100 = 1): the simulator's Llama-3-8B profiles saturated on a shared-prefix
# workload (68 / 97 / 33 req/s per replica, docs/multicluster.md); a pod label kvgate.io/speed overrides it.
GPU_SPEED = {"h100": 1.0, "h200": 1.4, "a100": 0.5, "l4": 0.15, "b200": 2.0}
TYPICAL_PREFILL_S = 0.05  # one typical request's prefill on an H100 (~1k prompt tokens, 8B model)
MAX_BATCH = 64  # running requests at which an endpoint counts as fully loaded by batch alone
# Below this KV use, running / kv is too coarse to say how many requests the cache holds (one short
# request in an empty cache would claim hundreds of slots; MAX_BATCH caps it anyway).
SLOTS_MIN_KV = 0.05
SLOTS_ALPHA = 0.2  # a remembered estimate moves this far towards each new reading


class Bloom(msgspec.Struct, frozen=True):
    """``bits`` bits (power of two), ``k`` probes by double hashing the 64-bit block hash."""

    bits: int
    k: int
    data: str  # base64 of the bit array

    def contains(self, h: int) -> bool:
        raw = _decoded(self)
        return all(raw[i >> 3] & (1 << (i & 7)) for i in _probes(h, self.bits, self.k))


_DECODED: dict[str, bytes] = {}


def _decoded(b: Bloom) -> bytes:
    # One decode per distinct filter (a fetcher swaps filters every refresh: keep only the latest few).
    raw = _DECODED.get(b.data)
    if raw is None:
        raw = _keep_decoded(b.data, base64.b64decode(b.data))
    return raw


def _keep_decoded(data: str, raw: bytes) -> bytes:
    if len(_DECODED) > 64:
        _DECODED.clear()
    _DECODED[data] = raw
    return raw


def _probes(h: int, bits: int, k: int) -> Iterable[int]:
    h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
    mask = bits - 1
    return ((h1 + i * h2) & mask for i in range(k))


def build_bloom(hashes: Sequence[int], max_bits: int = MAX_BLOOM_BITS) -> Bloom:
    want = max(64, len(hashes) * BLOOM_BITS_PER_ENTRY)
    bits = min(max_bits, 1 << (want - 1).bit_length())
    arr = bytearray(bits // 8)
    mask = bits - 1
    steps = range(BLOOM_HASHES)
    for h in hashes:  # _probes inlined: this loop is the snapshot's main cost
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        for i in steps:
            p = (h1 + i * h2) & mask
            arr[p >> 3] |= 1 << (p & 7)
    return Bloom(bits, BLOOM_HASHES, base64.b64encode(bytes(arr)).decode("ascii"))


class PoolAggregate(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    snapshot_time: float
    ready_endpoints: int
    total_endpoints: int
    average_kv_cache_utilization: float = 0.0
    average_queue_size: float = 0.0
    average_running_requests: float = 0.0
    std_dev_kv_cache_utilization: float = 0.0
    std_dev_queue_size: float = 0.0
    std_dev_running_requests: float = 0.0
    min_queue_size: float = 0.0
    max_queue_size: float = 0.0
    ready_by_gpu: dict[str, int] = {}
    capacity: float = 0.0
    headroom: float = 0.0
    inflight_requests: int = 0
    request_slots: float = 0.0
    predicted_ttft_s: float | None = None
    metrics_age_s: float | None = None
    prefix_chunk_chars: int | None = None
    prefix_bloom: Bloom | None = None
    tls: bool = False
    mtls: bool = False
    # The model names the pool serves: its front door's config names first, then those its servers'
    # metrics carry (``model_name``, ``EndpointMetrics.models``), then their running and waiting LoRA
    # adapters (each group sorted), at most ``MAX_MODELS`` of at most ``MAX_MODEL_CHARS`` (cut from the
    # end, on receive too): a global gateway or hub EPP gives them labels of their own
    # (``kvgate.openai.labels``). Empty from a pool that names none, or from an older kvgate.
    models: tuple[str, ...] = ()


# The most model names an aggregate lists, and the longest it lists (64 x 256 characters keep the
# answer under MAX_RESPONSE_BYTES beside the largest Bloom filter).
MAX_MODELS = 64
MAX_MODEL_CHARS = 256

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PoolAggregate)


def encode(agg: PoolAggregate) -> bytes:
    return _encoder.encode(agg)


class ImpossibleAggregate(msgspec.ValidationError):
    """An aggregate whose numbers no pool can have (``impossible``): refused as a failed fetch."""


def decode(raw: bytes) -> PoolAggregate:
    """Parse an aggregate (raises ``msgspec.ValidationError`` / ``DecodeError`` on a bad one, and
    ``ImpossibleAggregate`` on numbers no pool can have)."""
    if len(raw) > MAX_RESPONSE_BYTES:
        raise msgspec.ValidationError(f"aggregate of {len(raw)} bytes exceeds {MAX_RESPONSE_BYTES}")
    agg = _decoder.decode(raw)
    why = impossible(agg)
    if why is not None:
        raise ImpossibleAggregate(f"impossible aggregate: {why}")
    models = agg.models
    if len(models) > MAX_MODELS or any(len(m) > MAX_MODEL_CHARS for m in models):
        # (a peer's list over the bounds: cut as the sender cuts, keeping its order, its config names first)
        agg = msgspec.structs.replace(agg, models=_cut_models(models))
    return agg


# The numbers that are counts, sums, averages or ages: never below 0 in a pool's aggregate.
_NOT_NEGATIVE = (
    "ready_endpoints", "total_endpoints", "average_kv_cache_utilization", "average_queue_size",
    "average_running_requests", "std_dev_kv_cache_utilization", "std_dev_queue_size",
    "std_dev_running_requests", "min_queue_size", "max_queue_size", "capacity", "headroom",
    "inflight_requests", "request_slots", "predicted_ttft_s", "metrics_age_s",
)  # fmt: skip


def impossible(a: PoolAggregate) -> str | None:
    """Why no pool could report ``a`` (the first field found), None when it could (qa25 F1: one member
    whose aggregate said ``headroom`` 1e12 over ``capacity`` 4, or a negative queue, slots or age, took
    every request of the global gateway, its cost 0 whatever was sent there). ``aggregate`` makes each
    of these hold: a count or average is not negative, ready endpoints are some of the endpoints (and
    ``ready_by_gpu`` counts them), ``headroom`` (speed x (1 - load), load in 0..1) is at most ``capacity``
    (speed summed in the same order), ``prefix_chunk_chars`` is positive, and a Bloom filter's bit array is
    the size it says (``bits`` a power of two, ``data`` base64 of ``bits / 8`` bytes: a shorter one would
    raise on a lookup)."""
    for name in _NOT_NEGATIVE:
        v = getattr(a, name)
        if v is not None and v < 0:
            return f"{name} {v!r} < 0"
    if a.ready_endpoints > a.total_endpoints:
        return f"ready_endpoints {a.ready_endpoints} > total_endpoints {a.total_endpoints}"
    if a.headroom > a.capacity * (1.0 + 1e-9):  # (a rounding's slack for another summing order)
        return f"headroom {a.headroom!r} > capacity {a.capacity!r}"
    by_gpu = a.ready_by_gpu.values()
    if any(n < 0 for n in by_gpu) or sum(by_gpu) > a.ready_endpoints:
        return f"ready_by_gpu {a.ready_by_gpu!r} does not count ready_endpoints {a.ready_endpoints}"
    if a.prefix_chunk_chars is not None and a.prefix_chunk_chars <= 0:
        return f"prefix_chunk_chars {a.prefix_chunk_chars} <= 0"
    b = a.prefix_bloom
    if b is not None:
        if b.bits < 8 or b.bits & (b.bits - 1) or not 0 < b.k <= 64:
            return f"prefix_bloom bits {b.bits} / k {b.k}: not a power of two >= 8 / not 1..64"
        try:
            raw = base64.b64decode(b.data, validate=True)
        except ValueError:
            return "prefix_bloom data: not base64"
        if len(raw) * 8 != b.bits:
            return f"prefix_bloom data of {len(raw) * 8} bits, not {b.bits}"
        _keep_decoded(b.data, raw)  # (its lookups read it decoded: decoded once)
    return None


def _cut_models(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` in order, less the empty, the wildcard, the over-long and repeats, at most ``MAX_MODELS``."""
    out: dict[str, None] = {}
    for m in names:
        if m and m != "*" and len(m) <= MAX_MODEL_CHARS:
            out[m] = None
            if len(out) >= MAX_MODELS:
                break
    return tuple(out)


def gpu_of(ep: Endpoint) -> str:
    for key in GPU_LABELS:
        v = ep.labels.get(key)
        if v:
            low = v.lower()
            for gpu in GPU_SPEED:
                if gpu in low:
                    return gpu
            return low
    return "unknown"


def speed_of(ep: Endpoint) -> float:
    v = ep.labels.get(SPEED_LABEL)
    if v:
        try:
            return max(0.0, float(v))
        except ValueError:
            pass
    return GPU_SPEED.get(gpu_of(ep), 1.0)


def measured_slots(ep: Endpoint) -> float | None:
    """Requests the endpoint's KV cache holds at its current mix (``running / kv_cache_usage``), capped at
    ``MAX_BATCH``; None when it reports too little to tell (idle, or nearly)."""
    m = ep.metrics
    if m.running_requests <= 0 or m.kv_cache_usage < SLOTS_MIN_KV:
        return None
    return max(1.0, min(float(MAX_BATCH), m.running_requests / m.kv_cache_usage))


class SlotMemory:
    """Each endpoint's last slot estimate (moving average), so an endpoint that idles keeps what its KV
    cache was seen to hold instead of falling back to the ``MAX_BATCH`` prior. Bounded: only the addresses
    of the latest ``update`` are kept."""

    def __init__(self) -> None:
        self._slots: dict[str, float] = {}

    def update(self, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        old, self._slots = self._slots, {}
        for ep in endpoints:
            got, prev = measured_slots(ep), old.get(ep.address)
            if got is not None:
                self._slots[ep.address] = got if prev is None else prev + SLOTS_ALPHA * (got - prev)
            elif prev is not None:
                self._slots[ep.address] = prev
        return self._slots


def endpoint_slots(ep: Endpoint, memory: dict[str, float] | None = None) -> float:
    """Requests the endpoint holds when full: remembered, else measured now, else the ``MAX_BATCH`` prior."""
    got = memory.get(ep.address) if memory else None
    if got is None:
        got = measured_slots(ep)
    return float(MAX_BATCH) if got is None else got


def endpoint_load(ep: Endpoint, slots: float) -> float:
    """0 (idle) .. 1 (full): the tightest of KV use and running batch, plus the queue and what we sent
    unseen, each request counted as one of the ``slots`` the endpoint holds when full."""
    m = ep.metrics
    queued = m.waiting_queue_size + max(0, ep.inflight.requests - m.running_requests - m.waiting_queue_size)
    # (never below 0, whatever a server reports: a negative load would put headroom over capacity)
    return max(0.0, min(1.0, max(m.kv_cache_usage, m.running_requests / slots) + queued / slots))


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    mu = sum(xs) / len(xs)
    return mu, math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))


def aggregate(
    name: str,
    endpoints: Iterable[Endpoint],
    *,
    now: float,
    wall: float,
    staleness_s: float = 2.0,
    hot_blocks: Sequence[int] = (),
    prefix_chunk_chars: int | None = None,
    tls: bool = False,
    mtls: bool = False,
    bloom: Bloom | None = None,
    slots: dict[str, float] | None = None,
    models: Iterable[str] = (),
) -> PoolAggregate:
    """The snapshot of ``endpoints`` at clock time ``now`` (``wall`` is the same instant, epoch seconds);
    ``slots``: remembered per-endpoint slot estimates (``SlotMemory``); ``models``: the names the front
    door's config serves from this pool, listed with those its servers report."""
    eps = list(endpoints)
    ready = [
        e
        for e in eps
        if e.healthy and e.metrics.updated_at is not None and now - e.metrics.updated_at <= staleness_s
    ]
    kv_mu, kv_sd = _mean_std([e.metrics.kv_cache_usage for e in ready])
    queues = [float(e.metrics.waiting_queue_size) for e in ready]
    q_mu, q_sd = _mean_std(queues)
    r_mu, r_sd = _mean_std([float(e.metrics.running_requests) for e in ready])
    by_gpu: dict[str, int] = {}
    for e in ready:
        g = gpu_of(e)
        by_gpu[g] = by_gpu.get(g, 0) + 1
    capacity = sum(speed_of(e) for e in ready)
    n_slots = {e.address: endpoint_slots(e, slots) for e in ready}
    headroom = sum(speed_of(e) * (1.0 - endpoint_load(e, n_slots[e.address])) for e in ready)
    ttft: float | None = None
    if capacity > 0:
        # The queue ahead of a new request, served by the pool's combined speed, plus its own prefill.
        ahead = sum(e.metrics.waiting_queue_size for e in ready)
        ttft = TYPICAL_PREFILL_S * (1.0 + ahead / capacity) / (capacity / len(ready))
    ages = [now - e.metrics.updated_at for e in ready if e.metrics.updated_at is not None]
    if bloom is None and hot_blocks:
        bloom = build_bloom(hot_blocks)
    named: set[str] = set()
    adapters: set[str] = set()
    for e in eps:
        m = e.metrics
        named |= m.models
        adapters |= m.running_loras
        adapters |= m.waiting_loras
    return PoolAggregate(
        name=name,
        snapshot_time=wall,
        ready_endpoints=len(ready),
        total_endpoints=len(eps),
        average_kv_cache_utilization=kv_mu,
        average_queue_size=q_mu,
        average_running_requests=r_mu,
        std_dev_kv_cache_utilization=kv_sd,
        std_dev_queue_size=q_sd,
        std_dev_running_requests=r_sd,
        min_queue_size=min(queues, default=0.0),
        max_queue_size=max(queues, default=0.0),
        ready_by_gpu=by_gpu,
        capacity=capacity,
        headroom=headroom,
        inflight_requests=sum(e.inflight.requests for e in eps),
        request_slots=sum(n_slots.values()),
        predicted_ttft_s=ttft,
        metrics_age_s=max(ages) if ages else None,
        prefix_chunk_chars=prefix_chunk_chars if bloom is not None else None,
        prefix_bloom=bloom,
        tls=tls,
        mtls=mtls,
        # (config names first, then the servers' own, then adapters, which come and go between scrapes:
        # a cut drops adapters before a pool's base model)
        models=_cut_models([*sorted(set(models)), *sorted(named), *sorted(adapters)]),
    )


# --- Prometheus: the reference's and llm-d's pool names, plus kvgate's own (label ``name``) ---------------
def _g(metric: str, doc: str) -> Gauge:
    return Gauge(metric, doc, ["name"])


_GAUGES: dict[str, tuple[Gauge, Callable[[PoolAggregate], float]]] = {
    "inference_pool_average_running_requests": (
        _g("inference_pool_average_running_requests", "Mean running requests over the pool's endpoints."),
        lambda a: a.average_running_requests,
    ),
    "llm_d_epp_average_kv_cache_utilization": (
        _g("llm_d_epp_average_kv_cache_utilization", "The average kv cache utilization for a pool."),
        lambda a: a.average_kv_cache_utilization,
    ),
    "llm_d_epp_average_queue_size": (
        _g("llm_d_epp_average_queue_size", "The average number of requests pending in the queue."),
        lambda a: a.average_queue_size,
    ),
    "llm_d_epp_average_running_requests": (
        _g("llm_d_epp_average_running_requests", "The average number of running requests."),
        lambda a: a.average_running_requests,
    ),
    "llm_d_epp_std_dev_kv_cache_utilization": (
        _g("llm_d_epp_std_dev_kv_cache_utilization", "Std-dev of kv cache utilization in the pool."),
        lambda a: a.std_dev_kv_cache_utilization,
    ),
    "llm_d_epp_std_dev_queue_size": (
        _g("llm_d_epp_std_dev_queue_size", "Std-dev of requests pending in the queue."),
        lambda a: a.std_dev_queue_size,
    ),
    "llm_d_epp_std_dev_running_requests": (
        _g("llm_d_epp_std_dev_running_requests", "Std-dev of running requests."),
        lambda a: a.std_dev_running_requests,
    ),
    "llm_d_epp_ready_endpoints": (
        _g("llm_d_epp_ready_endpoints", "The number of ready endpoints in the pool."),
        lambda a: float(a.ready_endpoints),
    ),
    "kvgate_pool_capacity": (
        _g("kvgate_pool_capacity", "Ready endpoints weighted by GPU speed (H100 = 1)."),
        lambda a: a.capacity,
    ),
    "kvgate_pool_request_slots": (
        _g("kvgate_pool_request_slots", "Requests the ready endpoints hold when full (KV-cache estimate)."),
        lambda a: a.request_slots,
    ),
    "kvgate_pool_headroom": (
        _g("kvgate_pool_headroom", "Free capacity: ready endpoints x speed x (1 - load)."),
        lambda a: a.headroom,
    ),
    "kvgate_pool_predicted_ttft_seconds": (
        _g("kvgate_pool_predicted_ttft_seconds", "Predicted TTFT of a typical request now."),
        lambda a: a.predicted_ttft_s if a.predicted_ttft_s is not None else float("nan"),
    ),
}


def export_gauges(agg: PoolAggregate) -> None:
    """Set the pool gauges from a snapshot (the reference's other ``inference_pool_*`` live in
    scheduling)."""
    for gauge, value in _GAUGES.values():
        gauge.labels(name=agg.name).set(value(agg))


class AggregateSource:
    """What a front door needs to answer ``/v1/pool/aggregate``: a snapshot of its store, on demand."""

    def __init__(
        self,
        name: str,
        endpoints: Callable[[], Iterable[Endpoint]],
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        hot_blocks: Callable[[], Sequence[int]] = tuple,
        prefix_chunk_chars: int | None = None,
        tls: bool = False,
        mtls: bool = False,
        models: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.name = name
        self.endpoints = endpoints
        self.models = models  # the config's model names for the pool (``PoolAggregate.models``)
        self.clock = clock
        self.wall = wall
        self.hot_blocks = hot_blocks
        self.prefix_chunk_chars = prefix_chunk_chars
        self.tls = tls
        self.mtls = mtls
        self._bloom: Bloom | None = None
        self._bloom_at: float | None = None
        self._slots = SlotMemory()
        # metrics older leave the ready set (``kvgate epp --metrics-staleness-threshold``; 2 s as there)
        self.staleness_s = 2.0

    def _summary(self, now: float) -> Bloom | None:
        if self._bloom_at is None or now - self._bloom_at >= BLOOM_EVERY_S:
            hot = self.hot_blocks()
            self._bloom = build_bloom(hot) if hot else None
            self._bloom_at = now
        return self._bloom

    def snapshot(self) -> PoolAggregate:
        agg = self._aggregate(whole=True)
        export_gauges(agg)
        return agg

    def refresh_gauges(self) -> None:
        """Set the pool gauges from the endpoints now, with the door's other ``inference_pool_*`` gauges
        (``kvgate serve``: at each ``/metrics`` scrape; ``kvgate epp``: every second), not only when an
        aggregate is served (review s17-qa M3: before, they were missing until a global gateway read one,
        then frozen at that read). The numbers only: no prefix summary, no model names."""
        export_gauges(self._aggregate(whole=False))

    def _aggregate(self, *, whole: bool) -> PoolAggregate:
        now = self.clock()
        eps = list(self.endpoints())
        return aggregate(
            self.name,
            eps,
            now=now,
            wall=self.wall(),
            staleness_s=self.staleness_s,
            prefix_chunk_chars=self.prefix_chunk_chars,
            tls=self.tls,
            mtls=self.mtls,
            bloom=self._summary(now) if whole else None,
            slots=self._slots.update(eps),
            models=self.models() if whole else (),
        )

    def body(self) -> bytes:
        raw = encode(self.snapshot())
        if len(raw) > MAX_RESPONSE_BYTES:  # cannot happen with the bit cap; keep the promise anyway
            raise ValueError(f"aggregate of {len(raw)} bytes exceeds {MAX_RESPONSE_BYTES}")
        return raw


def as_dict(agg: PoolAggregate) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(agg)
    return out
