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
from kvgate.flowcontrol.metrics import (
    DEFAULT_FLOW,
    MAX_FLOW_LABELS,
    OUTCOMES,
    PROMOTE_AT,
    QUEUE_DURATION,
    FlowLabels,
)
from kvgate.openai.labels import FairnessLabels
from kvgate.openai.protocol import DEFAULT_FAIRNESS_ID


def _dispatched(flow: str | None = None) -> tuple[float, float]:
    """(histogram count, counter) of the ``Dispatched`` outcome, over every label (process-wide), or of one
    ``fairness_id`` label."""
    hist = sum(
        s.value
        for m in QUEUE_DURATION.collect()
        for s in m.samples
        if s.name.endswith("_count")
        and s.labels.get("outcome") == "Dispatched"
        and flow in (None, s.labels.get("fairness_id"))
    )
    total = sum(
        s.value
        for m in OUTCOMES.collect()
        for s in m.samples
        if s.name.endswith("_total")
        and s.labels.get("outcome") == "Dispatched"
        and flow in (None, s.labels.get("fairness_id"))
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


def test_the_default_flow_has_its_own_label_from_its_first_request() -> None:
    """Review s19-qa2 L1: a request that names no flow is ``default-flow`` on llm-d's families (always its
    own label) and was ``other`` on flow control's until 32 of its outcomes promoted it: one request, two
    ``fairness_id``s. The reference labels it ``default-flow`` on both; so does kvgate now."""
    labels = FlowLabels()
    assert labels.label(DEFAULT_FLOW) == DEFAULT_FLOW == DEFAULT_FAIRNESS_ID
    assert labels.label(DEFAULT_FLOW) == FairnessLabels().label(DEFAULT_FAIRNESS_ID)
    for n in range(MAX_FLOW_LABELS * PROMOTE_AT):  # 16 tenants promoted: the default flow is not one of them
        labels.count(f"t{n // PROMOTE_AT}")
    assert len(labels.labelled) == MAX_FLOW_LABELS + 1 and labels.label("t15") == "t15"


async def test_a_request_without_a_flow_is_default_flow_on_flow_controls_families(
    door_factory: Any,  # noqa: F811
) -> None:
    """Through both doors: the outcome of a request of the default flow is counted under ``default-flow``."""
    d: Door = await door_factory()
    before = _dispatched(DEFAULT_FLOW)
    d.backend.release.release()
    status, body = await asyncio.wait_for(d.send("p", DEFAULT_FLOW), WAIT)
    assert status == 200, body
    after = _dispatched(DEFAULT_FLOW)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1), (before, after)
