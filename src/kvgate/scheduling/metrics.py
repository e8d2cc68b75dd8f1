"""The picker's Prometheus metrics (default registry), named after the reference's where one exists.

The series touched on every pick (scheduling latency, picks per endpoint, prefix hit ratio and bytes)
are lock-free collectors (``fastmetrics``) with the same names and buckets.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from kvgate.scheduling.fastmetrics import FastCounter, FastHistogram

SCHEDULER_E2E = FastHistogram(
    "inference_extension_scheduler_e2e_duration_seconds",
    "End-to-end scheduling latency (one pick, all profiles).",
    buckets=(0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1),
)
# Bounded: one series per endpoint address the picker has chosen.
PICKS = FastCounter(
    "kvgate_scheduler_picks_total", "Requests scheduled to each endpoint (primary pick).", "endpoint"
)
SCHEDULER_ERRORS = Counter("kvgate_scheduler_errors_total", "Scheduling failures by error code.", ["code"])
PREFIX_INDEX_SIZE = Gauge(
    "inference_extension_prefix_indexer_size", "Entries (endpoint, block) in the approximate prefix index."
)
PREFIX_HIT_RATIO = FastHistogram(
    "inference_extension_prefix_indexer_hit_ratio",
    "Fraction of a request's prefix blocks found at the chosen endpoint.",
    buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
)
PREFIX_HIT_BYTES = FastHistogram(
    "inference_extension_prefix_indexer_hit_bytes",
    "Prompt bytes (characters) matched in the prefix index at the chosen endpoint.",
    buckets=(0, 256, 1024, 4096, 16384, 65536),
)
POOL_KV = Gauge(
    "inference_pool_average_kv_cache_utilization",
    "Mean KV-cache utilisation over the pool's endpoints.",
    ["name"],
)
POOL_QUEUE = Gauge(
    "inference_pool_average_queue_size", "Mean waiting-queue size over the pool's endpoints.", ["name"]
)
# One series per ready endpoint (its address: kvgate's endpoints carry no pod name), and llm-d's twin.
POOL_PER_POD_QUEUE = Gauge(
    "inference_pool_per_pod_queue_size",
    "Requests waiting in each ready endpoint's queue (model_server_pod: its address).",
    ["name", "model_server_pod"],
)
LLMD_PER_ENDPOINT_QUEUE = Gauge(
    "llm_d_epp_per_endpoint_queue_size",
    "Requests waiting in each ready endpoint's queue (model_server_endpoint: its address).",
    ["name", "model_server_endpoint"],
)
POOL_READY = Gauge("inference_pool_ready_pods", "Endpoints eligible for scheduling in the pool.", ["name"])
SHED = Counter("kvgate_requests_shed_total", "Sheddable requests rejected at saturation.")

_SCHEDULER_ERROR_CHILDREN: dict[str, Any] = {}


def scheduler_error(code: str) -> None:
    """Count one scheduling failure under ``code``. The labelled child is cached: ``labels()`` takes a
    lock and runs its checks on every call (3x the increment), and a shed storm counts one per request.
    Bounded: the codes are the scheduler's own."""
    child = _SCHEDULER_ERROR_CHILDREN.get(code)
    if child is None:
        child = _SCHEDULER_ERROR_CHILDREN[code] = SCHEDULER_ERRORS.labels(code=code)
    child.inc()
