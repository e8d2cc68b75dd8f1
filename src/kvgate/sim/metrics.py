"""Prometheus text for one simulated replica, with vLLM's (or SGLang's) exact metric names and labels.

Rendered directly rather than through ``prometheus_client`` collectors: a fleet of replicas in one process
renders each page from one ``EngineStats`` snapshot plus a few histograms, with no registry per replica and
no per-observation locking. The output follows the text exposition format (``# HELP``/``# TYPE``, counters
ending in ``_total``, cumulative ``_bucket{le=...}`` series with ``_sum``/``_count``) and is checked against
``prometheus_client.parser.text_string_to_metric_families`` in the tests.

Latency histograms are in simulated seconds: wall time x ``time_scale`` (identical at ``--time-scale 1``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvgate.sim.types import EngineStats

# vLLM V1's bucket boundaries (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """A fixed-bucket histogram: O(log buckets) per observation, bounded memory."""

    buckets: Sequence[float]
    counts: list[int] = field(init=False)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # last slot: +Inf only

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is inclusive).
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, out: list[str], name: str, labels: str) -> None:
        acc = 0
        sep = "," if labels else ""
        for bound, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {acc}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.total!r}")
        out.append(f"{name}_count{{{labels}}} {self.n}")


@dataclass(slots=True)
class ServerCounters:
    """What the HTTP front counts beside the engine's own stats."""

    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    finished: dict[str, int] = field(default_factory=lambda: {"length": 0, "stop": 0, "abort": 0})
    errors_injected: int = 0
    steps: int = 0
    steps_late: int = 0  # steps whose tokens were delivered later than their wall-clock deadline (+ slack)
    step_lag_s: float = 0.0  # the last step's lag behind its deadline (wall seconds, >= 0)
    step_lag_max_s: float = 0.0
    step_lag_sum_s: float = 0.0  # sum of per-step lags (mean lag = sum / steps)
    step_time_s: float = 0.0  # wall seconds the steps should have taken (sum of duration x slow / scale)
    _lora_key: tuple[str, str] = ("", "")
    _lora_ts: float = 0.0

    def lora_timestamp(self, running: str, waiting: str) -> float:
        """vLLM's ``lora_requests_info`` value: the unix time its label set last changed."""
        key = (running, waiting)
        if key != self._lora_key or not self._lora_ts:
            self._lora_key = key
            self._lora_ts = time.time()
        return self._lora_ts


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _head(out: list[str], name: str, kind: str, help_: str) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")


def render_vllm(stats: EngineStats, c: ServerCounters, model: str, *, prefix_caching: bool = True) -> str:
    lab = f'engine="0",model_name="{_esc(model)}"'
    out: list[str] = []

    def gauge(name: str, value: float, help_: str) -> None:
        _head(out, name, "gauge", help_)
        out.append(f"{name}{{{lab}}} {float(value)!r}")

    def counter(name: str, value: float, help_: str) -> None:
        _head(out, name, "counter", help_)
        out.append(f"{name}{{{lab}}} {float(value)!r}")

    gauge("vllm:num_requests_running", stats.num_running, "Number of requests in model execution batches.")
    gauge("vllm:num_requests_waiting", stats.num_waiting, "Number of requests waiting to be processed.")
    gauge("vllm:kv_cache_usage_perc", stats.kv_cache_usage, "KV-cache usage. 1 means 100 percent usage.")
    _head(out, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
    info = (
        f'block_size="{stats.block_size}",cache_dtype="auto",enable_prefix_caching="{prefix_caching}",'
        f'engine="0",gpu_memory_utilization="0.9",num_cpu_blocks="0",num_gpu_blocks="{stats.num_gpu_blocks}",'
        f'num_gpu_blocks_override="None",sliding_window="None",swap_space="0"'
    )
    out.append(f"vllm:cache_config_info{{{info}}} 1.0")
    running = ",".join(stats.running_loras)
    waiting = ",".join(stats.waiting_loras)
    _head(out, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.")
    out.append(
        f'vllm:lora_requests_info{{max_lora="{stats.max_loras}",running_lora_adapters="{_esc(running)}",'
        f'waiting_lora_adapters="{_esc(waiting)}"}} {c.lora_timestamp(running, waiting)!r}'
    )
    counter("vllm:prefix_cache_queries_total", stats.prefix_cache_queries, "Prefix cache queries, in tokens.")
    counter("vllm:prefix_cache_hits_total", stats.prefix_cache_hits, "Prefix cache hits, in tokens.")
    counter("vllm:prompt_tokens_total", stats.prompt_tokens_total, "Number of prefill tokens processed.")
    counter("vllm:generation_tokens_total", stats.generation_tokens_total, "Number of generation tokens.")
    counter("vllm:num_preemptions_total", stats.num_preemptions, "Cumulative number of preemptions.")
    _head(out, "vllm:request_success_total", "counter", "Count of successfully processed requests.")
    for reason, n in c.finished.items():
        if reason != "abort":
            out.append(f'vllm:request_success_total{{{lab},finished_reason="{reason}"}} {float(n)!r}')
    for name, h, help_ in (
        ("vllm:time_to_first_token_seconds", c.ttft, "Histogram of time to first token in seconds."),
        ("vllm:inter_token_latency_seconds", c.itl, "Histogram of inter-token latency in seconds."),
        ("vllm:e2e_request_latency_seconds", c.e2e, "Histogram of e2e request latency in seconds."),
        ("vllm:request_queue_time_seconds", c.queue, "Histogram of time spent in WAITING phase for request."),
    ):
        _head(out, name, "histogram", help_)
        h.render(out, name, lab)
    _render_sim(out, c)
    return "\n".join(out) + "\n"


def render_sglang(stats: EngineStats, c: ServerCounters, model: str) -> str:
    lab = f'model_name="{_esc(model)}"'
    out: list[str] = []

    def metric(name: str, kind: str, value: float, help_: str) -> None:
        _head(out, name, kind, help_)
        out.append(f"{name}{{{lab}}} {float(value)!r}")

    metric("sglang:num_running_reqs", "gauge", stats.num_running, "The number of running requests.")
    metric(
        "sglang:num_queue_reqs", "gauge", stats.num_waiting, "The number of requests in the waiting queue."
    )
    metric("sglang:token_usage", "gauge", stats.kv_cache_usage, "The token usage.")
    used = round(stats.kv_cache_usage * stats.num_gpu_blocks * stats.block_size)
    metric("sglang:num_used_tokens", "gauge", used, "The number of used tokens.")
    hit_rate = stats.prefix_cache_hits / stats.prefix_cache_queries if stats.prefix_cache_queries else 0.0
    metric("sglang:cache_hit_rate", "gauge", hit_rate, "The prefix cache hit rate.")
    _head(out, "sglang:cache_config_info", "gauge", "Information of the cache config.")
    out.append(
        f'sglang:cache_config_info{{{lab},num_pages="{stats.num_gpu_blocks}",'
        f'page_size="{stats.block_size}"}} 1.0'
    )
    metric("sglang:prompt_tokens_total", "counter", stats.prompt_tokens_total, "Number of prefill tokens.")
    metric("sglang:generation_tokens_total", "counter", stats.generation_tokens_total, "Generation tokens.")
    metric("sglang:num_requests_total", "counter", sum(c.finished.values()), "Number of requests processed.")
    for name, h, help_ in (
        ("sglang:time_to_first_token_seconds", c.ttft, "Histogram of time to first token in seconds."),
        ("sglang:inter_token_latency_seconds", c.itl, "Histogram of inter-token latency in seconds."),
        ("sglang:e2e_request_latency_seconds", c.e2e, "Histogram of end-to-end request latency in seconds."),
    ):
        _head(out, name, "histogram", help_)
        h.render(out, name, lab)
    _render_sim(out, c)
    return "\n".join(out) + "\n"


def _render_sim(out: list[str], c: ServerCounters) -> None:
    """The simulator's own health: whether its step clock keeps up with real time."""
    _head(
        out, "kvgate_sim_step_lag_seconds", "gauge", "How late the last engine step was delivered (wall s)."
    )
    out.append(f"kvgate_sim_step_lag_seconds {c.step_lag_s!r}")
    _head(out, "kvgate_sim_step_lag_max_seconds", "gauge", "The largest step lag seen (wall s).")
    out.append(f"kvgate_sim_step_lag_max_seconds {c.step_lag_max_s!r}")
    _head(out, "kvgate_sim_steps_total", "counter", "Engine steps run.")
    out.append(f"kvgate_sim_steps_total {float(c.steps)!r}")
    _head(out, "kvgate_sim_steps_late_total", "counter", "Engine steps delivered later than their deadline.")
    out.append(f"kvgate_sim_steps_late_total {float(c.steps_late)!r}")
    _head(out, "kvgate_sim_injected_errors_total", "counter", "Requests failed on purpose (fault injection).")
    out.append(f"kvgate_sim_injected_errors_total {float(c.errors_injected)!r}")
