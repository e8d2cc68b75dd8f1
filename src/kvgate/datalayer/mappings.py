"""Per-engine metric names, turned into the engine-neutral ``EndpointMetrics``.

Names are the exact upstream ones (see /work/shared/reference/model-servers.md). Each signal lists the
names to try in order (vLLM renamed ``gpu_cache_usage_perc`` to ``kv_cache_usage_perc``), an optional
label selector (Triton keeps several signals in one family), and how to combine several series
(data-parallel ranks show up as one series per ``engine`` label: queues add up, utilisation averages).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from kvgate.datalayer.endpoint import EndpointMetrics
from kvgate.datalayer.promparse import Sample, find_samples


@dataclass(frozen=True, slots=True)
class Signal:
    names: tuple[str, ...]
    match: tuple[tuple[str, str], ...] = ()
    combine: Callable[[Sequence[float]], float] = sum

    def read(self, samples: dict[str, list[Sample]]) -> float | None:
        for name in self.names:
            vals = [
                v for labels, v in samples.get(name, ()) if all(labels.get(k) == x for k, x in self.match)
            ]
            if vals:
                return self.combine(vals)
        return None


def _mean(vals: Sequence[float]) -> float:
    return sum(vals) / len(vals)


@dataclass(frozen=True, slots=True)
class EngineMapping:
    engine: str
    waiting: Signal
    running: Signal
    kv_usage: Signal
    # Either an info metric with labels (vLLM, SGLang) or two plain gauges (TensorRT-LLM).
    cache_info: str | None = None
    block_size_label: str = "block_size"
    num_blocks_label: str = "num_gpu_blocks"
    block_size: Signal | None = None
    num_blocks: Signal | None = None
    lora_info: str | None = None
    # The server renders its page with Python's prometheus_client from a registry that knows its
    # collectors' names, so its exposition app honours ``?name[]=<series>`` (only those collectors are
    # collected and rendered): see ``filter_query``. A multiprocess registry does not (see "sglang").
    name_filter: bool = False

    def wanted(self) -> frozenset[str]:
        out: set[str] = set()
        for sig in (self.waiting, self.running, self.kv_usage, self.block_size, self.num_blocks):
            if sig is not None:
                out.update(sig.names)
        out.update(n for n in (self.cache_info, self.lora_info) if n)
        return frozenset(out)


def _triton(kind: str, family: str = "nv_trt_llm_request_metrics", key: str = "request_type") -> Signal:
    return Signal((family,), ((key, kind),))


MAPPINGS: dict[str, EngineMapping] = {
    "vllm": EngineMapping(
        "vllm",
        waiting=Signal(("vllm:num_requests_waiting",)),
        running=Signal(("vllm:num_requests_running",)),
        kv_usage=Signal(("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), combine=_mean),
        cache_info="vllm:cache_config_info",
        lora_info="vllm:lora_requests_info",
        name_filter=True,
    ),
    "sglang": EngineMapping(
        "sglang",
        waiting=Signal(("sglang:num_queue_reqs",)),
        running=Signal(("sglang:num_running_reqs",)),
        kv_usage=Signal(("sglang:token_usage",), combine=_mean),
        cache_info="sglang:cache_config_info",
        block_size_label="page_size",
        num_blocks_label="num_pages",
        # No filter: SGLang serves /metrics (and /metrics/...) from prometheus_client's make_asgi_app
        # over a fresh CollectorRegistry holding only a multiprocess.MultiProcessCollector
        # (sgl-project/sglang python/sglang/srt/utils/common.py, add_prometheus_middleware). That
        # collector has no describe() and the registry no auto_describe, so the registry knows no
        # names and ``?name[]=`` selects nothing: an empty 200 page (checked against prometheus_client
        # 0.26's restricted_registry). Asking would cost a wasted request before every fallback.
        name_filter=False,
    ),
    "trtllm-serve": EngineMapping(
        "trtllm-serve",
        waiting=Signal(("trtllm_num_requests_waiting",)),
        running=Signal(("trtllm_num_requests_running",)),
        kv_usage=Signal(("trtllm_kv_cache_utilization",), combine=_mean),
        block_size=Signal(("trtllm_kv_cache_tokens_per_block",), combine=max),
        num_blocks=Signal(("trtllm_kv_cache_max_blocks",), combine=max),
    ),
    "triton-tensorrt-llm": EngineMapping(
        "triton-tensorrt-llm",
        waiting=_triton("waiting"),
        running=_triton("scheduled"),
        kv_usage=Signal(
            ("nv_trt_llm_kv_cache_block_metrics",), (("kv_cache_block_type", "fraction"),), combine=_mean
        ),
        block_size=Signal(
            ("nv_trt_llm_kv_cache_block_metrics",), (("kv_cache_block_type", "tokens_per"),), combine=max
        ),
        num_blocks=Signal(
            ("nv_trt_llm_kv_cache_block_metrics",), (("kv_cache_block_type", "max"),), combine=max
        ),
    ),
}
_WANTED = {engine: m.wanted() for engine, m in MAPPINGS.items()}
_FILTER = {
    engine: urlencode([("name[]", n) for n in sorted(m.wanted())])
    for engine, m in MAPPINGS.items()
    if m.name_filter
}


def filter_query(engine: str) -> str | None:
    """The ``name[]=...`` query asking an engine's ``/metrics`` for only the series ``extract`` reads.

    Why: a vLLM 0.32 page is ~48 KB, almost all histograms, and rendering it costs the API server
    (the process that also tokenizes and streams) ~6.5 ms of CPU; the picker's six gauges cost
    ~0.7 ms, what a ``GET /health`` costs (docs/benchmarks/realvllm.md). None for engines whose
    server is not known to honour it.
    """
    return _FILTER.get(engine)


def cache_size_series(engine: str) -> str:
    """The series an engine's page gives its KV cache size by (for messages naming what is missing)."""
    m = MAPPINGS.get(engine)
    if m is None:
        return "its KV cache size"
    if m.cache_info:
        return f"{m.cache_info} ({m.block_size_label}, {m.num_blocks_label})"
    return " and ".join(n for sig in (m.block_size, m.num_blocks) if sig is not None for n in sig.names)


def page_has_signals(text: str, engine: str) -> bool:
    """Whether a page carries any series ``extract`` reads (a filtered request that reached some
    other handler, e.g. an HTML index, does not)."""
    return any(name in text for name in _WANTED[engine])


# The most model names one server's page is read for (``EndpointMetrics.models``), and the longest.
MAX_MODELS = 64
MAX_MODEL_CHARS = 256


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        return int(float(labels[key]))
    except (KeyError, ValueError):
        return None


def _adapters(value: str | None) -> frozenset[str]:
    return frozenset(a for a in (value or "").split(",") if a)


class UnknownEngineError(ValueError):
    pass


def mapping_for(engine: str) -> EngineMapping:
    try:
        return MAPPINGS[engine]
    except KeyError:
        raise UnknownEngineError(f"unknown engine type {engine!r}; known: {sorted(MAPPINGS)}") from None


def extract(text: str, engine: str, now: float, previous: EndpointMetrics | None = None) -> EndpointMetrics:
    """Read one ``/metrics`` page into ``EndpointMetrics`` stamped ``now``.

    Signals a page lacks keep their previous value (a server that does not export LoRA info should not
    look like it just unloaded every adapter).
    """
    m = mapping_for(engine)
    samples = find_samples(text, _WANTED[engine])
    prev = previous or EndpointMetrics()
    waiting = m.waiting.read(samples)
    running = m.running.read(samples)
    kv = m.kv_usage.read(samples)
    block_size, num_blocks = prev.block_size, prev.num_gpu_blocks
    if m.cache_info and m.cache_info in samples:
        labels = samples[m.cache_info][0][0]
        block_size = _int_label(labels, m.block_size_label) or block_size
        num_blocks = _int_label(labels, m.num_blocks_label) or num_blocks
    if m.block_size is not None:
        v = m.block_size.read(samples)
        block_size = int(v) if v else block_size
    if m.num_blocks is not None:
        v = m.num_blocks.read(samples)
        num_blocks = int(v) if v else num_blocks
    max_lora, running_loras, waiting_loras = prev.max_lora, prev.running_loras, prev.waiting_loras
    if m.lora_info and m.lora_info in samples:
        # Value is the series' last-update timestamp: only the newest series is current.
        labels, _ = max(samples[m.lora_info], key=lambda s: s[1])
        max_lora = _int_label(labels, "max_lora")
        running_loras = _adapters(labels.get("running_lora_adapters"))
        waiting_loras = _adapters(labels.get("waiting_lora_adapters"))
    models = prev.models
    named = {
        model
        for sig in (m.waiting, m.running)
        for n in sig.names
        for labels, _ in samples.get(n, ())
        if (model := labels.get("model_name")) and len(model) <= MAX_MODEL_CHARS
    }
    if named and named != models:
        models = frozenset(sorted(named)[:MAX_MODELS])  # (a page naming thousands: bounded)
    # Counts clamped at 0 as the KV share at 0..1: one server's negative gauge would otherwise make its
    # pool's aggregate one that every fetcher refuses (``aggregate.impossible``; review s25-rev-fixqa25 R2).
    return EndpointMetrics(
        waiting_queue_size=max(0, int(waiting)) if waiting is not None else prev.waiting_queue_size,
        running_requests=max(0, int(running)) if running is not None else prev.running_requests,
        kv_cache_usage=min(1.0, max(0.0, kv)) if kv is not None else prev.kv_cache_usage,
        block_size=block_size,
        num_gpu_blocks=num_blocks,
        max_lora=max_lora,
        running_loras=running_loras,
        waiting_loras=waiting_loras,
        updated_at=now,
        models=models,
    )
