from __future__ import annotations

import pytest

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector
from kvgate.scheduling.framework import PluginHandle


def _ep(q: int, kv: float, t: float | None = 0.0) -> Endpoint:
    return Endpoint("a:1", metrics=EndpointMetrics(waiting_queue_size=q, kv_cache_usage=kv, updated_at=t))


def test_utilization_detector() -> None:
    d = UtilizationDetector("u", PluginHandle())
    assert d.endpoint_saturation(_ep(5, 0.2), 0.0) == pytest.approx(1.0)
    assert d.endpoint_saturation(_ep(1, 0.4), 0.0) == pytest.approx(0.5)
    assert d.endpoint_saturation(_ep(0, 0.0), 0.3) == 1.0  # stale
    assert d.endpoint_saturation(_ep(0, 0.0, None), 0.0) == 1.0  # never scraped
    assert d.saturation([_ep(10, 0.0), _ep(0, 0.0)], 0.0) == pytest.approx(1.0)
    assert d.saturated([_ep(10, 0.0), _ep(0, 0.0)], 0.0)
    assert not d.saturated([_ep(9, 0.0), _ep(0, 0.0)], 0.0)


def test_concurrency_detector() -> None:
    d = ConcurrencyDetector("c", PluginHandle(), max_requests=4, max_tokens=1000)
    e = _ep(0, 0.0)
    e.inflight.requests = 2
    assert d.endpoint_saturation(e, 0.0) == 0.5
    e.inflight.pending_prefill_tokens = 1500
    assert d.endpoint_saturation(e, 0.0) == 1.5
