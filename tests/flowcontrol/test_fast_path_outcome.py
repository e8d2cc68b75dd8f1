"""Review s19-qa L3: with flow control on, a request admitted at once (nothing queued, room in its pool)
left no outcome in ``inference_extension_flow_control_request_queue_duration_seconds`` nor
``kvgate_flow_control_requests_total``: only queued requests were counted, so a dashboard's rejection ratio
and wait percentiles were over the queued ones alone (the reference's ``FlowItem.finalize`` records every
request, ``Dispatched`` with its ~0 wait for one dispatched at once). Both doors (``kvgate serve``, ``kvgate
epp`` over real gRPC); fails before the fix (0 Dispatched for 3 requests). Adapted from the QA's
``test_qa19_flow_metrics_count_every_request.py``."""

from __future__ import annotations

import asyncio
from typing import Any

from flowcontrol.test_doors import WAIT, Door, door_factory  # noqa: F401  (the fixture)
from kvgate.flowcontrol.metrics import OUTCOMES, QUEUE_DURATION


def _dispatched() -> tuple[float, float]:
    """(histogram count, counter) of the ``Dispatched`` outcome, over every label (process-wide)."""
    hist = sum(
        s.value
        for m in QUEUE_DURATION.collect()
        for s in m.samples
        if s.name.endswith("_count") and s.labels.get("outcome") == "Dispatched"
    )
    total = sum(
        s.value
        for m in OUTCOMES.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("outcome") == "Dispatched"
    )
    return hist, total


def _zero_wait_bucket() -> float:
    """Dispatched observations in the histogram's first bucket (le 1 ms), over every label."""
    return sum(
        s.value
        for m in QUEUE_DURATION.collect()
        for s in m.samples
        if s.name.endswith("_bucket")
        and s.labels.get("outcome") == "Dispatched"
        and s.labels.get("le") == "0.001"
    )


async def test_every_request_admitted_at_once_is_recorded_dispatched(door_factory: Any) -> None:  # noqa: F811
    d: Door = await door_factory()
    before, zero_before = _dispatched(), _zero_wait_bucket()
    for n in range(3):  # one at a time: never saturated, never queued
        d.backend.release.release()
        status, body = await asyncio.wait_for(d.send(f"p{n}", "fast"), WAIT)
        assert status == 200, body
        assert d.queued == 0
    after = _dispatched()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3), (before, after)
    assert _zero_wait_bucket() - zero_before == 3  # a 0 wait
