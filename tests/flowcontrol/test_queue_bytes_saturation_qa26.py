"""Review s26-qa F3: ``inference_extension_flow_control_queue_bytes`` and ``..._pool_saturation`` through both
doors, with their values.

GIE ``pkg/epp/metrics``: ``..._queue_bytes`` (gauge; ``fairness_id``, ``priority``, ``inference_pool``,
``model_name``, ``target_model_name``: the bytes of the requests queued) and ``..._pool_saturation`` (gauge;
``inference_pool``). Before, neither family existed (QA: a dashboard panel empty, an autoscaler rule on queue
bytes "no data"). Here: one request held at the backend (``concurrency-detector maxConcurrency: 1``), one
queued; the process registry as /metrics renders it shows the queued body's bytes under its flow and the
pool saturated (1.0), then 0 bytes once it left.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flowcontrol.test_doors import WAIT, Door, eventually
from flowcontrol.test_doors import door_factory as door_factory  # (the fixture: both doors)


def _families() -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}


def _queue_bytes(pool: str, flow: str) -> float:
    fam = _families().get("inference_extension_flow_control_queue_bytes")
    assert fam is not None, "queue_bytes family missing"
    assert fam.type == "gauge"
    return sum(
        s.value for s in fam.samples if s.labels["inference_pool"] == pool and s.labels["fairness_id"] == flow
    )


def _saturation(pool: str) -> list[float]:
    fam = _families().get("inference_extension_flow_control_pool_saturation")
    assert fam is not None, "pool_saturation family missing"
    assert fam.type == "gauge"
    return [s.value for s in fam.samples if s.labels == {"inference_pool": pool}]


async def test_queue_bytes_and_pool_saturation_with_a_request_queued(door_factory: Any) -> None:
    d: Door = await door_factory()
    flow = d.director.flow
    assert flow is not None
    pool = flow.ctl.metrics.pool
    assert pool  # (each door names its pool)
    held = d.start("held", "default-flow")
    await eventually(lambda: d.backend.arrivals == ["held"], "the first request at the backend")
    assert _saturation(pool) == [1.0]  # one in flight of maxConcurrency 1
    # The flow id is the default flow's: it always has its own label (no promotion to wait for).
    waiting = d.start("queued " * 50, "default-flow")
    await eventually(lambda: d.queued == 1, "one queued")
    body = len(orjson.dumps({"model": "m", "prompt": "queued " * 50, "max_tokens": 1}))
    assert _queue_bytes(pool, "default-flow") == body
    d.backend.release.release()
    await eventually(lambda: d.queued == 0, "the queued request dispatched")
    assert _queue_bytes(pool, "default-flow") == 0
    d.backend.release.release()
    assert [(await asyncio.wait_for(t, WAIT))[0] for t in (held, waiting)] == [200, 200]
    await eventually(lambda: d.director.flow is not None and _saturation(pool) == [0.0], "the pool idle")
