"""``flowControl.holdPredictedMisses``: a sheddable request whose pick says it is predicted to miss its
SLO on every endpoint (``PredictedMissError``, raised by ``slo-headroom-tier-filter`` with
``shedSheddable``) waits in the queue instead of failing with 429, until a pick succeeds or its TTL
expires; while held it does not block the requests queued behind it."""

from __future__ import annotations

import asyncio
import time

import pytest

from flowcontrol.test_doors import eventually
from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher
from kvgate.scheduling.types import (
    InferenceRequest,
    NoCapacityError,
    PickResult,
    PredictedMissError,
    ShedError,
)

EP = Endpoint("10.0.0.1:8000")
WAIT = 10.0


class Picker:
    """Predicts a miss for the request ids in ``missing`` (until removed); records successful picks."""

    def __init__(self, missing: set[str]) -> None:
        self.missing = missing
        self.tries: dict[str, int] = {}
        self.picked: list[str] = []

    def __call__(self, req: InferenceRequest, explain: bool) -> PickResult:
        self.tries[req.request_id] = self.tries.get(req.request_id, 0) + 1
        if req.request_id in self.missing:
            raise PredictedMissError("sheddable request predicted to miss its SLO on every endpoint")
        self.picked.append(req.request_id)
        return PickResult([EP], "default")


def dispatcher(picker: Picker, hold: bool, ttl: float = 30.0, saturated: bool = False) -> FlowDispatcher:
    cfg = FlowControlConfig(ttl=ttl, hold_predicted_misses=hold)
    return FlowDispatcher(
        FlowController(cfg),
        pick=picker,
        saturated=lambda _r: saturated,
        clock=time.monotonic,
        hold_misses=hold,
        recheck_interval=0.01,
    )


def req(rid: str, flow: str = "a") -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=-1, fairness_id=flow)


def test_the_config_key() -> None:
    assert parse_flow_control({"holdPredictedMisses": True}).hold_predicted_misses
    assert not parse_flow_control({}).hold_predicted_misses


async def test_without_hold_a_predicted_miss_is_a_429() -> None:
    d = dispatcher(Picker({"x"}), hold=False)
    with pytest.raises(ShedError):
        await d.admit(req("x"))


@pytest.mark.parametrize("saturated", [False, True])  # picked at arrival, or after a wait in the queue
async def test_held_until_predicted_to_make_it_and_not_blocking_the_others(saturated: bool) -> None:
    picker = Picker({"x"})
    d = dispatcher(picker, hold=True, saturated=saturated)
    held = asyncio.ensure_future(d.admit(req("x", flow="a")))
    try:
        await asyncio.sleep(0.05)
        if saturated:
            d.saturated = lambda _r: False
            d.notify()
        # Another sheddable request of the same band and flow policy gets through while x is held.
        other = await asyncio.wait_for(d.admit(req("y", flow="a")), WAIT)
        assert other.primary is EP
        assert not held.done() and picker.tries["x"] >= 1 + (not saturated)
        assert len(d) == 1  # x is still queued (limits and metrics count it)
        picker.missing.clear()  # the prediction improves
        result = await asyncio.wait_for(held, WAIT)
        assert result.primary is EP
        assert picker.picked == ["y", "x"]
        assert len(d) == 0
    finally:
        held.cancel()


async def test_held_until_its_ttl_expires_then_503() -> None:
    d = dispatcher(Picker({"x"}), hold=True, ttl=0.2)
    with pytest.raises(NoCapacityError, match="TTL"):
        await asyncio.wait_for(d.admit(req("x")), WAIT)
    assert len(d) == 0


async def test_a_held_request_whose_client_leaves_is_gone() -> None:
    d = dispatcher(Picker({"x"}), hold=True)
    held = asyncio.ensure_future(d.admit(req("x")))
    await eventually(lambda: len(d) == 1, "the request held")
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert len(d) == 0
    band = d.ctl.bands[-1]
    assert (band.count, band.bytes) == (0, 0)


async def test_with_the_real_tier_filter_a_predicted_miss_waits_for_its_ttl_instead_of_a_429() -> None:
    import yaml

    from kvgate.config.director import build_director
    from kvgate.datalayer.store import EndpointStore
    from scheduling.test_latency_plugins import EXAMPLE, FAST, SLOW, Clock, _serve_one

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["featureGates"] = ["flowControl"]
    doc["flowControl"] = {"holdPredictedMisses": True, "defaultRequestTTL": "30s"}
    clock = Clock()
    d = build_director(doc, EndpointStore.from_addresses([FAST, SLOW]), clock, seed=0, flow_metrics=False)
    for i in range(30):  # the model learns: TTFT ~50 ms on FAST, ~400 ms on SLOW
        _serve_one(d, clock, i)
    for ep in d.store.all():
        ep.metrics.updated_at = clock.t
    assert d.flow is not None
    tight = {"x-slo-ttft-ms": "5"}  # nobody is predicted under 5 ms
    task = asyncio.ensure_future(
        d.admit(InferenceRequest("s1", "m", prompt_text="request x " * 50, headers=tight, priority=-1))
    )
    try:
        await asyncio.sleep(0.1)
        assert not task.done()  # held, not shed
        assert len(d.flow) == 1
        clock.t += 31.0  # past its TTL
        d.flow.notify()
        with pytest.raises(NoCapacityError, match="TTL"):
            await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()


async def test_outcome_metrics_a_held_try_then_one_dispatch() -> None:
    from prometheus_client import REGISTRY

    from kvgate.flowcontrol.metrics import FlowLabels, FlowMetrics

    def sample(outcome: str) -> float:
        labels = {"priority": "-1", "fairness_id": "hold-metrics", "outcome": outcome}
        return REGISTRY.get_sample_value("kvgate_flow_control_requests_total", labels) or 0.0

    before = {o: sample(o) for o in ("HeldPredictedMiss", "Dispatched", "RejectedOther")}
    picker = Picker({"x"})
    d = FlowDispatcher(
        FlowController(  # (a label at its first request: its own series from the start)
            FlowControlConfig(hold_predicted_misses=True), FlowMetrics(True, FlowLabels(promote_at=1))
        ),
        pick=picker, saturated=lambda _r: False, clock=time.monotonic, hold_misses=True,
        recheck_interval=0.01,
    )  # fmt: skip
    held = asyncio.ensure_future(d.admit(req("x", flow="hold-metrics")))
    try:
        await asyncio.sleep(0.05)
        picker.missing.clear()
        await asyncio.wait_for(held, WAIT)
    finally:
        held.cancel()
    assert sample("HeldPredictedMiss") >= before["HeldPredictedMiss"] + 1  # (at arrival; retries add more)
    assert sample("Dispatched") == before["Dispatched"] + 1  # once, when it really left
    assert sample("RejectedOther") == before["RejectedOther"]


def test_held_again_and_again_one_expiry_entry_and_backing_off() -> None:
    """A request turned back by every pick until its TTL keeps one expiry-heap entry (not one per
    try), and its re-picks back off: 1, 2, 4, ... up to 16 recheck intervals apart."""
    from kvgate.flowcontrol.dispatcher import MAX_HOLD_BACKOFF

    ctl = FlowController(FlowControlConfig(ttl=30.0, hold_predicted_misses=True))
    d = FlowDispatcher(
        ctl, pick=Picker({"x"}), saturated=lambda _r: False, clock=lambda: 0.0, hold_misses=True,
        recheck_interval=0.01,
    )  # fmt: skip
    item = ctl.enqueue(req("x"), 0.0)
    now, gaps = 0.0, []
    for _ in range(40):
        assert ctl.head() is item
        ctl.take(item, now, record=False)
        d._hold(item, now)
        assert item.held_until is not None
        gaps.append(round(item.held_until - now, 6))
        now = item.held_until
        ctl.unhold(now)
    assert len(ctl._expiry) == 1
    assert gaps[:6] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.16]
    assert max(gaps) == 0.01 * MAX_HOLD_BACKOFF
    assert len(ctl) == 1
    assert ctl.expire(31.0) == [item]  # its one entry still expires it
    assert len(ctl) == 0 and not ctl._expiry


async def test_a_request_cancelled_before_its_handler_ran_is_not_charged_or_picked() -> None:
    # The client went away: its future is cancelled at once, its own handler (ctl.cancel) runs on a
    # later loop turn. A dispatch pass in between takes it: recorded as cancelled, its charge undone.
    picker = Picker(set())
    d = FlowDispatcher(
        FlowController(FlowControlConfig()), pick=picker, clock=time.monotonic,
        saturated=lambda r: r.request_id == "stays",  # (keeps flow "a" queued, its account kept)
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[PickResult] = loop.create_future()
    gone = d.ctl.enqueue(req("gone"), time.monotonic(), handle=fut)
    d.ctl.enqueue(req("stays"), time.monotonic(), handle=loop.create_future())
    fut.cancel()
    d.step()
    assert picker.picked == []
    assert gone.outcome == "EvictedContextCancelled"
    assert gone.cost > 0 and d.ctl.bands[gone.priority].flows["a"].service == 0
