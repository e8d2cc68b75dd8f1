"""s26-rev-fixqa26b F4: ``inference_extension_scheduler_attempts_total{status="failure"}`` (f0e5f782,
scheduling/metrics.py:69) skips every error whose code is ``rate_limit_exceeded``, meant for sheds
("refused before its scheduler runs"). ``PoolBusyError`` has the same code but is raised *by the scheduler*:
the profile's filter that drops full endpoints (``concurrency-detector`` in the profile, GIE's filter) left
none -- GIE's scheduler returns an error there and records the attempt as a failure
(``RecordSchedulerAttempt(err)``). Here the pick runs, fails, and neither status moves."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from kvgate.config.director import build_director
from kvgate.config.picker import parse_config
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.types import InferenceRequest, PoolBusyError

CFG = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
        {"type": "queue-scorer"},
        {"type": "max-score-picker"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": n} for n in ("concurrency-detector", "queue-scorer", "max-score-picker")
            ],
        }
    ],
}


def _attempts(status: str) -> float:
    v = REGISTRY.get_sample_value("inference_extension_scheduler_attempts_total", {"status": status})
    return v or 0.0


def test_pool_busy_from_the_scheduler_is_a_failed_attempt() -> None:
    store = EndpointStore.from_addresses(["127.0.0.1:1"])
    d = build_director(parse_config(CFG), store)
    for ep in store.all():
        ep.inflight.requests = 1  # at maxConcurrency: the profile's filter keeps none
    fail0, ok0 = _attempts("failure"), _attempts("success")
    with pytest.raises(PoolBusyError):
        d.pick(InferenceRequest(request_id="r", model="m"))
    assert _attempts("success") == ok0
    assert _attempts("failure") == fail0 + 1
