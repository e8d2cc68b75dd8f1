"""Gateway metrics on the admin port, with the reference EPP's names where one exists.

Label children are cached per (model, target model) so the hot path does a dict lookup and a few
increments, not prometheus_client's label resolution. The pool gauges
(``inference_pool_average_kv_cache_utilization``, ``..._queue_size``, ``inference_pool_ready_pods``)
belong to the picker (``kvgate.scheduling.metrics``, default registry); the gateway refreshes them
when ``/metrics`` is scraped, so they cost nothing per request.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kvgate.scheduling.director import Usage

_LATENCY_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_TOKEN_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ["model_name", "target_model_name"]
        self.requests = Counter("inference_objective_request_total", "Requests received", labels, registry=r)
        self.errors = Counter(
            "inference_objective_request_error_total",
            "Requests that failed",
            [*labels, "error_code"],
            registry=r,
        )
        self.duration = Histogram(
            "inference_objective_request_duration_seconds",
            "Request latency, arrival to last byte",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Prompt tokens (from usage)",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Completion tokens (from usage)",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("kvgate_gateway_inflight_requests", "Requests being handled", registry=r)
        self.retries = Counter(
            "kvgate_gateway_retries_total", "Attempts retried on another endpoint", registry=r
        )
        self.ejections = Counter(
            "kvgate_gateway_endpoint_ejections_total", "Endpoints ejected after repeated failures", registry=r
        )
        self._children: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}

    def _child(self, model: str, target: str) -> tuple[Any, Any, Any, Any]:
        key = (model, target)
        c = self._children.get(key)
        if c is None:
            # Bounded: models come from the config (unknown ones are refused before this point).
            c = (
                self.requests.labels(model, target),
                self.duration.labels(model, target),
                self.input_tokens.labels(model, target),
                self.output_tokens.labels(model, target),
            )
            self._children[key] = c
        return c

    def observe(self, model: str, target: str, seconds: float, usage: Usage | None) -> None:
        req, dur, inp, out = self._child(model, target)
        req.inc()
        dur.observe(seconds)
        if usage is not None:
            # 0 = not reported (an embeddings usage has no completion_tokens): nothing to observe.
            if usage.prompt_tokens:
                inp.observe(usage.prompt_tokens)
            if usage.completion_tokens:
                out.observe(usage.completion_tokens)

    def error(self, model: str, target: str, code: str) -> None:
        self.errors.labels(model, target, code).inc()
