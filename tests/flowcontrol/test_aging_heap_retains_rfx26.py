"""s26-rev-fixes26 F2: fixfc26b's ``Band._aging`` (d44ca283) drops finished entries only at its top when
``aged_by`` runs (a pass whose band choice is an aged head, for a lower band with queued requests) or when
a push finds it over ``2 x count + 64``. A band that drains and then gets no new request keeps every
finished request (its InferenceRequest: prompt text, token ids, headers) for as long as it stays idle:
after a burst of N, N requests held, past their TTL, when nothing else holds them any more (on main
1b0eae32 the expiry heap lets them go at their TTL). Time injected; counted among the collector's objects,
not timed."""

from __future__ import annotations

import gc

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

# (the collector sees the whole pytest process: another test's request named "b..." still alive counted here
# in the final CI of session 27, 1 of 2000; only this test's own ids are counted)
PREFIX = "rfx26-drained-"


def _req(rid: str, prio: int, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_text="x" * 1000, max_tokens=100, fairness_id=f"f{rid}", priority=prio,
        headers={"x-slo-ttft-ms": "10000"}, arrival_time=at,
    )  # fmt: skip


def test_a_drained_band_does_not_keep_its_finished_requests() -> None:
    cfg = {"orderingPolicy": "slo-feasible", "maxRequests": 10000}
    ctl = FlowController(parse_flow_control(cfg))  # (TTL 30 s)
    for i in range(2000):  # (a burst in the batch band)
        r = _req(f"{PREFIX}{i}", -1, 0.0)
        ctl.enqueue(r, 0.0)
        del r
    sent = 0
    for item in dispatch_ready(ctl, 1.0, lambda _r: False):
        ctl.record(item, "Dispatched", 1.0)
        sent += 1
    del item
    assert sent == 2000 and len(ctl) == 0
    ctl.expire(100.0)  # (the dispatcher's sweep, long past the burst's TTL: the expiry heap lets them go)
    ctl.enqueue(_req("i0", 0, 100.0), 100.0)  # (other bands go on)
    for item in dispatch_ready(ctl, 100.0, lambda _r: False):
        ctl.record(item, "Dispatched", 100.0)
    del item
    gc.collect()
    alive = sum(
        1 for o in gc.get_objects() if isinstance(o, InferenceRequest) and o.request_id.startswith(PREFIX)
    )
    assert alive == 0, f"{alive} of 2000 finished requests still held by the drained band"
