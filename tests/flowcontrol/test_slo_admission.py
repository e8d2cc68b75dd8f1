"""``flowControl.sloAdmission``: at dispatch, a sheddable request the latency model predicts to miss its
TTFT SLO on every endpoint waits in the queue while it can still make it and is shed (429,
``RejectedPredictedMiss``) once it cannot; requests that are not sheddable are never judged.

The gate (``SLOAdmission``) with a stub model; the controller's give-up times; the dispatcher; the
Director with the real ``predicted-latency-scorer``; and both front doors over real HTTP and real
gRPC ext_proc on loopback (the model trained by hand, so the outcome does not hang on timing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY

from flowcontrol.test_doors import HeldBackend, eventually
from kvgate.config.director import build_director
from kvgate.config.gateway import parse_gateway_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.context import build_context
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import EnvoyHarness, channel
from kvgate.flowcontrol.config import FlowControlConfig, parse_flow_control
from kvgate.flowcontrol.controller import REJECTED_PREDICTED_MISS, FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher, dispatch_ready
from kvgate.flowcontrol.sloadmission import MIN_SAMPLES, PredictedSLOMissError, SLOAdmission
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError, CycleState, PluginHandle, TTFTEstimate, TTFTOracle
from kvgate.scheduling.latency import features
from kvgate.scheduling.types import InferenceRequest, PickResult, ShedError

WAIT = 20.0  # generous: the CI machine is loaded
EP = Endpoint("10.0.0.1:8000")


class StubOracle(TTFTOracle):
    def __init__(self, mean: float, std: float = 0.0, floor: float = 0.0, samples: int = 100) -> None:
        super().__init__("stub", PluginHandle())
        self.est = TTFTEstimate(mean, std, samples)
        self.floor = floor

    def ttft_estimates(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[TTFTEstimate]:
        return [self.est for _ in endpoints]

    def ttft_floor(self, cycle: CycleState, endpoints: Sequence[Endpoint], z: float = 0.0) -> float:
        return self.floor + z * self.est.std


def request(priority: int = -1, slo_ms: str | None = "1000", arrival: float = 10.0, rid: str = "r",
            header: str = "x-slo-ttft-ms") -> InferenceRequest:  # fmt: skip
    headers = {header: slo_ms} if slo_ms is not None else {}
    return InferenceRequest(
        rid, "m", prompt_tokens=100, priority=priority, headers=headers, arrival_time=arrival
    )


def judge(
    oracle: TTFTOracle, req: InferenceRequest, now: float, z: float = 1.0, default: float = 2.0
) -> None:
    SLOAdmission(oracle, confidence=z, default_slo=default).check(CycleState(req, now, False), [EP])


# -- the gate --------------------------------------------------------------------------------------


def test_predicted_to_make_it_passes_and_a_miss_that_can_wait_says_until_when() -> None:
    judge(StubOracle(0.5, std=0.2), request(), now=10.1)  # 0.1 waited + 0.5 + 0.2 <= 1 s
    with pytest.raises(PredictedSLOMissError) as e:
        judge(StubOracle(0.5, std=0.2, floor=0.3), request(), now=10.4)  # 0.4 + 0.7 > 1 s
    # It could still pass on an idle endpoint (0.3 s + 1 x 0.2 s judged) until 10 + 1 - 0.5.
    assert e.value.give_up_at == pytest.approx(10.5)
    assert e.value.status == 429


def test_the_uncertainty_counts_and_confidence_0_judges_by_the_mean() -> None:
    with pytest.raises(PredictedSLOMissError):
        judge(StubOracle(0.8, std=0.3), request(), now=10.0)
    judge(StubOracle(0.8, std=0.3), request(), now=10.0, z=0.0)


def test_past_reach_even_idle_gives_up_at_once() -> None:
    with pytest.raises(PredictedSLOMissError) as e:
        judge(StubOracle(2.0, floor=0.9), request(), now=10.5)  # 0.5 left < the 0.9 s idle floor
    assert e.value.give_up_at <= 10.5
    with pytest.raises(PredictedSLOMissError) as e:
        judge(StubOracle(0.1), request(), now=12.0)  # its SLO deadline has passed
    assert e.value.give_up_at <= 12.0


def test_requests_that_are_not_sheddable_are_never_judged() -> None:
    for prio in (0, 10):
        judge(StubOracle(100.0, floor=100.0), request(priority=prio), now=50.0)


def test_an_endpoint_the_model_does_not_know_yet_lets_it_through() -> None:
    judge(StubOracle(100.0, samples=MIN_SAMPLES - 1), request(), now=10.0)


def test_the_slo_header_names_and_the_default() -> None:
    with pytest.raises(PredictedSLOMissError):
        judge(StubOracle(0.5), request(slo_ms="100", header="x-llm-d-slo-ttft-ms"), now=10.0)
    judge(StubOracle(1.5), request(slo_ms=None), now=10.0, default=2.0)  # flowControl.defaultTTFTSLO
    with pytest.raises(PredictedSLOMissError):
        judge(StubOracle(1.5), request(slo_ms=None), now=10.0, default=1.0)


def test_the_config_keys() -> None:
    cfg = parse_flow_control({"sloAdmission": True, "sloAdmissionConfidence": 2})
    assert cfg.slo_admission and cfg.slo_admission_confidence == 2.0
    default = parse_flow_control({})
    assert not default.slo_admission and default.slo_admission_confidence == 1.0
    with pytest.raises(ConfigError, match=r"flowControl\.sloAdmissionConfidence"):
        parse_flow_control({"sloAdmissionConfidence": -1})


def test_without_a_latency_model_the_config_is_refused_naming_the_key() -> None:
    doc = {
        "featureGates": ["flowControl"],
        "flowControl": {"sloAdmission": True},
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    with pytest.raises(ConfigError, match=r"flowControl\.sloAdmission.*predicted-latency-scorer"):
        build_director(doc, EndpointStore([EP]), lambda: 0.0, seed=0, flow_metrics=False)


# -- the queue: held while it can make it, shed after ----------------------------------------------


def test_the_controller_gives_up_on_a_sheddable_request_at_its_slo_deadline() -> None:
    ctl = FlowController(FlowControlConfig(slo_admission=True))
    shed = ctl.enqueue(request(slo_ms="500", arrival=1.0, rid="s"), 1.0)
    kept = ctl.enqueue(request(priority=0, slo_ms="500", arrival=1.0, rid="k"), 1.0)
    assert ctl.next_deadline() == pytest.approx(1.5)
    assert ctl.give_ups(1.49) == []
    assert ctl.give_ups(1.5) == [shed] and shed.outcome == REJECTED_PREDICTED_MISS
    assert ctl.give_ups(100.0) == [] and len(ctl) == 1 and not kept.done
    off = FlowController(FlowControlConfig())
    off.enqueue(request(slo_ms="500", arrival=1.0), 1.0)
    assert off.give_ups(100.0) == []


class Gate:
    """A pick that raises what ``SLOAdmission`` would, until ``ok``."""

    def __init__(self, give_up_at: float) -> None:
        self.give_up_at = give_up_at
        self.ok = False
        self.tries = 0

    def __call__(self, req: InferenceRequest, explain: bool) -> PickResult:
        self.tries += 1
        if not self.ok and req.sheddable:
            raise PredictedSLOMissError("predicted to miss", self.give_up_at)
        return PickResult([EP], "default")


def flow_dispatcher(pick: Callable[[InferenceRequest, bool], PickResult]) -> FlowDispatcher:
    cfg = FlowControlConfig(slo_admission=True)
    return FlowDispatcher(
        FlowController(cfg),
        pick=pick,
        saturated=lambda _r: False,
        clock=time.monotonic,
        recheck_interval=0.01,
    )


async def test_held_while_it_can_make_it_then_dispatched_when_the_prediction_improves() -> None:
    gate = Gate(time.monotonic() + 60.0)
    d = flow_dispatcher(gate)
    task = asyncio.ensure_future(d.admit(request(arrival=time.monotonic(), slo_ms="60000")))
    try:
        await eventually(lambda: gate.tries >= 3, "tried again while held")
        assert not task.done() and len(d) == 1
        gate.ok = True
        assert (await asyncio.wait_for(task, WAIT)).primary is EP
        assert len(d) == 0
    finally:
        task.cancel()


async def test_held_then_shed_with_429_once_it_cannot_make_it() -> None:
    gate = Gate(time.monotonic() + 0.3)
    d = flow_dispatcher(gate)
    with pytest.raises(ShedError, match="can no longer meet its TTFT SLO"):
        await asyncio.wait_for(d.admit(request(arrival=time.monotonic(), slo_ms="60000")), WAIT)
    assert len(d) == 0 and gate.tries >= 2


async def test_out_of_reach_at_arrival_is_shed_at_once_and_critical_goes_through() -> None:
    gate = Gate(0.0)  # already past
    d = flow_dispatcher(gate)
    with pytest.raises(ShedError, match="predicted to miss"):
        await asyncio.wait_for(d.admit(request()), WAIT)
    assert len(d) == 0
    assert (await asyncio.wait_for(d.admit(request(priority=10)), WAIT)).primary is EP


# -- the Director, with the real latency model ---------------------------------------------------


def _picker_doc(z: float = 0.0) -> dict[str, Any]:
    return {
        "featureGates": ["flowControl"],
        "flowControl": {"sloAdmission": True, "sloAdmissionConfidence": z, "defaultRequestTTL": "30s"},
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 100}},
        # The model is in plugins but in no profile: routing is the queue scorer's.
        "plugins": [{"type": "queue-scorer"}, {"type": "predicted-latency-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }


def teach(director: Director, base: float = 0.5, per_queued: float = 3.0) -> None:
    """Train the model of every endpoint: TTFT = base + per_queued x queued requests."""
    gate = director.slo_admission
    assert gate is not None
    predictor = gate.oracle.predictor  # type: ignore[attr-defined]
    for ep in director.store.all():
        for i in range(3 * MIN_SAMPLES):
            queued = i % 4
            x = [1.0, float(queued), 0.0, 0.0, 0.001 * (1 + i % 7), 0.0, 0.0]
            predictor.observe_ttft(ep.address, x, base + per_queued * queued)


def test_the_director_learns_from_every_pick_with_the_model_in_no_profile() -> None:
    now = [0.0]
    d = build_director(_picker_doc(), EndpointStore([EP]), lambda: now[0], seed=0, flow_metrics=False)
    gate = d.slo_admission
    assert gate is not None
    for i in range(MIN_SAMPLES):
        req = InferenceRequest(f"q{i}", "m", prompt_tokens=100, arrival_time=now[0])
        result = d.pick(req)
        d.on_dispatched(req, result.primary)
        now[0] += 0.25
        d.on_first_token(req, result.primary)
        d.on_finished(req, result.primary, None, True)
    assert gate.oracle.predictor._models[EP.address].ttft.n == MIN_SAMPLES  # type: ignore[attr-defined]


def test_the_real_model_holds_under_load_and_its_floor_says_when_to_give_up() -> None:
    now = [100.0]
    d = build_director(_picker_doc(), EndpointStore([EP]), lambda: now[0], seed=0, flow_metrics=False)
    teach(d)
    x = features(EP, 100, 0.0, now[0], 2.0)
    assert x[1] == 0.0
    d.pick(request(slo_ms="2000", arrival=now[0]), judge=True)  # idle: 0.5 s predicted
    EP.inflight.requests = 1  # one queued at the server: 3.5 s predicted
    errors = REGISTRY.get_sample_value("kvgate_scheduler_errors_total", {"code": "rate_limit_exceeded"})
    try:
        with pytest.raises(PredictedSLOMissError) as e:
            d.pick(request(slo_ms="2000", arrival=now[0]), judge=True)
        # Held or shed, flow control counts it (its outcomes); a hold is no scheduler error.
        after = REGISTRY.get_sample_value("kvgate_scheduler_errors_total", {"code": "rate_limit_exceeded"})
        assert after == errors
        assert e.value.give_up_at == pytest.approx(now[0] + 2.0 - 0.5, abs=0.05)
        d.pick(request(priority=0, slo_ms="2000", arrival=now[0]))  # not sheddable: picked
        d.pick(request(slo_ms="2000", arrival=now[0]))  # a door's own pick (a retry): not judged
    finally:
        EP.inflight.requests = 0


# -- both front doors ----------------------------------------------------------------------------


def _gateway_doc(port: int) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "objectives": [{"name": "critical", "priority": 10}, {"name": "batch", "priority": -1}],
        "pools": [
            {
                "name": "p",
                "endpoints": [f"127.0.0.1:{port}"],
                "models": ["m"],
                "endpointPickerConfig": _picker_doc(),
            }
        ],
    }


Send = Callable[[str, str, str], Awaitable[tuple[int, dict[str, Any]]]]


def outcome_count(outcome: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "kvgate_flow_control_requests":
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("outcome") == outcome:
                    total += s.value
    return total


@pytest.fixture(params=["serve", "epp"])
async def door(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Send, Director, HeldBackend]]:
    backend = await HeldBackend().start()
    cfg = parse_gateway_config(_gateway_doc(backend.port))
    http = aiohttp.ClientSession()

    def body(prompt: str) -> bytes:
        return orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})

    cleanups: list[Callable[[], Awaitable[Any]]] = [backend.stop, http.close]
    if request.param == "serve":
        pools = [build_pool(p) for p in cfg.pools]
        gw = GatewayServer(cfg, pools, scrape=False)
        await gw.start()
        cleanups.append(lambda: gw.stop(drain_timeout=0.5))

        async def send(objective: str, slo_ms: str, prompt: str) -> tuple[int, dict[str, Any]]:
            hdrs = {"content-type": "application/json", "x-gateway-inference-objective": objective,
                    "x-slo-ttft-ms": slo_ms}  # fmt: skip
            async with http.post(
                f"http://127.0.0.1:{gw.port}/v1/completions", data=body(prompt), headers=hdrs
            ) as r:
                return r.status, orjson.loads(await r.read())

        director = pools[0].director
    else:
        store = EndpointStore.from_addresses([backend.address])
        epp_cfg = EppConfig(pool=cfg.pools[0], gateway=cfg, picker_config=cfg.pools[0].picker_config)
        ctx = build_context(epp_cfg, store, clock=time.monotonic)
        epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
        await epp.start()
        ch = channel(f"127.0.0.1:{epp.port}")
        cleanups += [lambda: epp.stop(0), ch.close]
        harness = EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http)

        async def send(objective: str, slo_ms: str, prompt: str) -> tuple[int, dict[str, Any]]:
            res = await harness.request("POST", "/v1/completions", body(prompt),
                                        {"x-gateway-inference-objective": objective,
                                         "x-llm-d-slo-ttft-ms": slo_ms})  # fmt: skip
            return res.status, orjson.loads(res.body)

        director = ctx.director
    assert isinstance(director, Director)
    try:
        yield send, director, backend
    finally:
        for c in reversed(cleanups):
            await c()


async def test_both_doors_hold_then_dispatch_shed_out_of_reach_and_never_shed_critical(door: Any) -> None:
    send, director, backend = door
    teach(director)  # 0.5 s idle, 3.5 s with one request waiting at the server
    shed_before = outcome_count(REJECTED_PREDICTED_MISS)
    # Out of reach even on an idle endpoint (100 ms left < 0.5 s): 429 at once, nothing sent.
    status, err = await asyncio.wait_for(send("batch", "100", "out of reach"), WAIT)
    assert status == 429 and "predicted to miss its TTFT SLO" in err["error"]["message"], err
    assert err["error"]["code"] == "rate_limit_exceeded"
    assert backend.arrivals == [] and outcome_count(REJECTED_PREDICTED_MISS) == shed_before + 1
    # A critical request with the same SLO is never judged: sent.
    critical = asyncio.ensure_future(send("critical", "100", "critical"))
    await eventually(lambda: backend.arrivals == ["critical"], "the critical request upstream")
    # One request waits at the server: a batch request with a 20 s SLO is predicted to make it (3.5 s).
    fits = asyncio.ensure_future(send("batch", "20000", "fits"))
    await eventually(lambda: backend.arrivals == ["critical", "fits"], "a batch request that fits")
    # Two wait now: with a 5 s SLO, predicted 6.5 s, but 0.5 s were the servers idle: held.
    held = asyncio.ensure_future(send("batch", "5000", "held"))
    assert director.flow is not None
    await eventually(lambda: len(director.flow) == 1, "the batch request held in the queue")
    await asyncio.sleep(0.2)
    assert backend.arrivals == ["critical", "fits"]
    # The load falls (both finish): predicted 0.5 s, within what is left: dispatched.
    backend.release.release()
    backend.release.release()
    assert (await asyncio.wait_for(critical, WAIT))[0] == 200
    assert (await asyncio.wait_for(fits, WAIT))[0] == 200
    await eventually(lambda: backend.arrivals[-1:] == ["held"], "the held request dispatched")
    backend.release.release()
    assert (await asyncio.wait_for(held, WAIT))[0] == 200


async def test_both_doors_shed_a_held_request_once_it_cannot_make_it(door: Any) -> None:
    send, director, backend = door
    teach(director)
    critical = asyncio.ensure_future(send("critical", "1000", "busy"))
    await eventually(lambda: backend.arrivals == ["busy"], "the critical request upstream")
    shed_before = outcome_count(REJECTED_PREDICTED_MISS)
    # Predicted 3.5 s against 1.5 s: held, and given up at arrival + 1.5 - 0.5 s (the idle floor).
    t0 = time.monotonic()
    status, err = await asyncio.wait_for(send("batch", "1500", "gives up"), WAIT)
    assert status == 429 and "can no longer meet its TTFT SLO" in err["error"]["message"], err
    assert time.monotonic() - t0 >= 0.9
    assert backend.arrivals == ["busy"] and outcome_count(REJECTED_PREDICTED_MISS) == shed_before + 1
    backend.release.release()
    assert (await asyncio.wait_for(critical, WAIT))[0] == 200


# -- a retry is not judged again -------------------------------------------------------------------


def teach_each(director: Director, ttft: dict[str, float]) -> None:
    """Train each endpoint's model to a flat TTFT (seconds) whatever the load."""
    gate = director.slo_admission
    assert gate is not None
    predictor = gate.oracle.predictor  # type: ignore[attr-defined]
    for address, seconds in ttft.items():
        for i in range(3 * MIN_SAMPLES):
            x = [1.0, float(i % 4), 0.0, 0.0, 0.001 * (1 + i % 7), 0.0, 0.0]
            predictor.observe_ttft(address, x, seconds)


async def test_a_retry_after_a_refused_connection_is_sent_not_judged_again() -> None:
    """Admitted by the gate at its first pick (a fast endpoint), the request's first endpoint refuses
    the connection: the retry goes to the other one, not a 503 from the gate judging it again there."""
    from gateway.backend import free_port

    backend = await HeldBackend().start()
    dead = f"127.0.0.1:{free_port()}"
    picker = _picker_doc()
    # Routing by the model too, so the first pick is the endpoint predicted fast (the dead one).
    picker["schedulingProfiles"][0]["plugins"].append({"pluginRef": "predicted-latency-scorer",
                                                        "weight": 100})  # fmt: skip
    doc = _gateway_doc(backend.port)
    doc["pools"][0]["endpoints"] = [dead, backend.address]
    doc["pools"][0]["endpointPickerConfig"] = picker
    pools = [build_pool(p) for p in parse_gateway_config(doc).pools]
    gw = GatewayServer(parse_gateway_config(doc), pools, scrape=False)
    await gw.start()
    http = aiohttp.ClientSession()
    try:
        director = pools[0].director
        assert isinstance(director, Director)
        teach_each(director, {dead: 0.2, backend.address: 5.0})  # the live one: past a 2 s SLO
        shed_before = outcome_count(REJECTED_PREDICTED_MISS)
        backend.release.release()
        hdrs = {"content-type": "application/json", "x-gateway-inference-objective": "batch",
                "x-slo-ttft-ms": "2000"}  # fmt: skip
        body = orjson.dumps({"model": "m", "prompt": "retried", "max_tokens": 1})
        async with http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=body, headers=hdrs) as r:
            status, reply = r.status, orjson.loads(await r.read())
        assert status == 200, reply
        assert backend.arrivals == ["retried"]
        assert gw.metrics.retries._value.get() >= 1  # (it did go to the dead endpoint first)
        assert outcome_count(REJECTED_PREDICTED_MISS) == shed_before
    finally:
        await http.close()
        await gw.stop(drain_timeout=0.5)
        await backend.stop()


def test_an_endpoint_due_a_re_probe_is_judged_by_its_own_model_not_the_prior() -> None:
    """An endpoint not picked in ``reprobeEvery`` picks is scored from the prior (so it gets tried
    again); the gate judges it by what its model knows, or any avoided endpoint would switch it off."""
    a, b = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    now = [100.0]
    d = build_director(_picker_doc(), EndpointStore([a, b]), lambda: now[0], seed=0, flow_metrics=False)
    teach(d)  # 0.5 s idle, 3.5 s with one request waiting at the server
    gate = d.slo_admission
    assert gate is not None
    predictor = gate.oracle.predictor  # type: ignore[attr-defined]
    for i in range(predictor.reprobe_every):  # every pick goes to b: a is due a re-probe
        req = InferenceRequest(f"c{i}", "m", prompt_tokens=100, arrival_time=now[0])
        req.subset = frozenset({b.address})
        d.pick(req)
    assert predictor.due_reprobe(a.address) and not predictor.due_reprobe(b.address)
    a.inflight.requests = b.inflight.requests = 1  # 3.5 s predicted on both against a 2 s SLO
    try:
        with pytest.raises(PredictedSLOMissError) as e:
            d.pick(request(slo_ms="2000", arrival=now[0]), judge=True)
        assert e.value.give_up_at == pytest.approx(now[0] + 2.0 - 0.5, abs=0.05)  # a's own idle floor
    finally:
        a.inflight.requests = b.inflight.requests = 0


@pytest.mark.parametrize("error", ["shed", "no endpoint"])
def test_a_request_shed_at_dispatch_is_not_charged_to_its_flow(error: str) -> None:
    """least-attained-service charges a flow as its request leaves the queue; when the pick then fails
    (shed by the gate, or no endpoint), the charge is undone, as a hold does."""
    from kvgate.scheduling.types import NoCapacityError

    cfg = parse_flow_control({"sloAdmission": True, "priorityBands": [
        {"priority": -1, "fairnessPolicy": "least-attained-service"}]})  # fmt: skip

    def pick(req: InferenceRequest, explain: bool) -> PickResult:
        if req.request_id == "doomed":
            if error == "shed":
                raise PredictedSLOMissError("predicted to miss", 0.0)  # past reach: shed
            raise NoCapacityError("no ready endpoint")
        return PickResult([EP], "default")

    ctl = FlowController(cfg)
    d = FlowDispatcher(ctl, pick=pick, saturated=lambda _r: False, clock=lambda: 1.0)
    doomed = ctl.enqueue(request(rid="doomed", arrival=1.0), 1.0)
    ctl.enqueue(request(rid="next", arrival=1.0), 1.0)  # (its flow stays active)
    band = ctl.bands[-1]
    assert band.fairness == "least-attained-service"
    before = band.flows[doomed.flow].service
    item = next(dispatch_ready(ctl, 1.0, lambda _r: False))
    assert item is doomed
    assert band.flows[doomed.flow].service == before + doomed.cost  # charged as it left
    got = d.settle(item, 1.0)
    assert isinstance(got, PredictedSLOMissError if error == "shed" else NoCapacityError)
    assert band.flows[doomed.flow].service == before


def test_the_deadline_give_up_is_armed_only_once_the_model_knows_the_endpoints() -> None:
    """Fresh gateway, model knows nothing: a queued sheddable request is not given up at its SLO
    deadline (it waits up to its TTL, as with the gate off): an unknown endpoint sheds nothing."""
    a, b = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    now = [100.0]
    d = build_director(_picker_doc(), EndpointStore([a, b]), lambda: now[0], seed=0, flow_metrics=False)
    assert d.flow is not None
    ctl = d.flow.ctl
    fresh = ctl.enqueue(request(slo_ms="2000", arrival=now[0], rid="fresh"), now[0])
    assert fresh.give_up_at == float("inf") and ctl.give_ups(now[0] + 5.0) == []
    teach(d)
    known = ctl.enqueue(request(slo_ms="2000", arrival=now[0], rid="known"), now[0])
    assert known.give_up_at == pytest.approx(now[0] + 2.0)
    assert ctl.give_ups(now[0] + 2.0) == [known] and not fresh.done
    # One endpoint the model does not know among the candidates: not armed either.
    d.store.add(Endpoint("10.0.0.3:8000"))
    new = ctl.enqueue(request(slo_ms="2000", arrival=now[0], rid="new"), now[0])
    assert new.give_up_at == float("inf")


def test_no_give_up_entry_past_the_requests_ttl() -> None:
    ctl = FlowController(FlowControlConfig(slo_admission=True, ttl=0.2))
    item = ctl.enqueue(request(slo_ms="500", arrival=1.0), 1.0)  # TTL at 1.2, before its 1.5 deadline
    assert item.give_up_at == float("inf") and ctl._give_ups == []
