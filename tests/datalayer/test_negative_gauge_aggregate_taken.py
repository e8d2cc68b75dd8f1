"""rev-fixqa25 R2: a cluster's own kvgate, aggregating truthfully what its pods' /metrics pages say, builds
an aggregate that ``aggregate.impossible`` refuses when ONE pod reports a negative queue or running gauge:
``mappings.extract`` keeps ``int(waiting)`` / ``int(running)`` unclamped (only ``kv_cache_usage`` is
clamped), so ``average_queue_size`` / ``min_queue_size`` / ``average_running_requests`` go below 0 and
every fetch of that cluster is refused (the cluster goes "unknown" at ttl_s and gets only the leftovers of
the fresh clusters' traffic). fixqa25 clamped ``endpoint_load`` for exactly this (so headroom stays <=
capacity) but not the averages the same decode checks. Producer and validator disagree: the producer
should clamp (or the validator should not refuse what kvgate itself emits)."""

from __future__ import annotations

import pytest

from kvgate.datalayer import mappings
from kvgate.datalayer.aggregate import aggregate, decode, encode
from kvgate.datalayer.endpoint import Endpoint

GOOD = """vllm:num_requests_waiting{model_name="m"} 0
vllm:num_requests_running{model_name="m"} 3
vllm:kv_cache_usage_perc{model_name="m"} 0.2
"""


def _pod(address: str, page: str) -> Endpoint:
    ep = Endpoint(address)
    ep.metrics = mappings.extract(page, "vllm", now=100.0)
    return ep


@pytest.mark.parametrize(
    ("others", "odd"),
    [
        (3, 'vllm:num_requests_waiting{model_name="m"} -1\nvllm:num_requests_running{model_name="m"} 3\n'),
        (0, 'vllm:num_requests_waiting{model_name="m"} 0\nvllm:num_requests_running{model_name="m"} -1\n'),
    ],
    ids=["waiting_-1_one_pod_of_4", "running_-1_one_pod_cluster"],
)
def test_one_pods_negative_gauge_does_not_make_its_clusters_aggregate_refused(others: int, odd: str) -> None:
    eps = [_pod(f"10.0.0.{i}:8000", GOOD) for i in range(others)] + [_pod("10.0.0.9:8000", odd)]
    agg = aggregate("pool", eps, now=100.5, wall=1.0)  # what the cluster's kvgate serves
    decode(encode(agg))  # what the global gateway / hub EPP fetcher does: must not refuse it
