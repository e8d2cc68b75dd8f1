"""A request of several sequences waiting for a server with room for all of them (fixfc22, review s22-fc F1,
F2): the server with the most free slots drains for it while the requests behind it go elsewhere; it stops
waiting at the midpoint of its wait (``FlowController.fit_given_up``) and then goes where the most slots
are free; a critical one stops a sheddable request only where that gives it the room. The real Director
on a simulated pool (2 servers x 8 slots), injected clock, no process started.
"""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest, PickResult, Usage

SLOTS = 8


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def director(clock: Clock, **flow_control: Any) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {"fairnessPolicy": "round-robin", "freeSlotPick": True, **flow_control},
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": SLOTS, "maxPendingRequests": SLOTS},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    store = EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
    return build_director(cfg, store, flow_metrics=False, clock=clock)


def request(rid: str, flow: str, n: int = 1, priority: int = 0, stream: bool = False) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=100, fairness_id=flow, sequences=n, priority=priority,
        stream=stream,
    )  # fmt: skip


def test_the_server_with_the_most_free_slots_drains_for_it_and_it_goes_there_whole() -> None:
    """A: 2 running, B: 3 (no server with 8 free). The n=8 head waits; the n=1 requests behind it go to B
    only (A is held to drain), and when A's two finish the head goes to A: 8 of 8, no overfill."""
    clock = Clock()
    d = director(clock, defaultRequestTTL="60s")
    flow = d.flow
    assert flow is not None
    a, b = d.store.all()
    running = [request(f"r{i}", "chat") for i in range(5)]
    for i, r in enumerate(running):
        d.on_dispatched(r, a if i < 2 else b)
        d.on_first_token(r, a if i < 2 else b)
    sent: dict[str, str] = {}
    big = request("big", "batch", n=SLOTS)
    assert not isinstance(flow.arrive(big, 0.0, None), PickResult)
    for i in range(4):
        flow.arrive(request(f"s{i}", "small"), 0.0, None)
    clock.now = 1.0
    for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
        got = flow.settle(item, clock.now)
        assert isinstance(got, PickResult)
        sent[item.req.request_id] = got.primary.address
    assert "big" not in sent and sorted(sent) == ["s0", "s1", "s2", "s3"]
    assert set(sent.values()) == {b.address}, sent  # (A held to drain for the head)
    assert a.inflight.requests == 2
    for r in running[:2]:  # A's two finish
        d.on_finished(r, a, Usage(10, 100), True)
    clock.now = 2.0
    for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
        got = flow.settle(item, clock.now)
        assert isinstance(got, PickResult)
        sent[item.req.request_id] = got.primary.address
    assert sent.get("big") == a.address and a.inflight.requests == SLOTS


def test_it_stops_waiting_at_the_midpoint_of_its_wait_and_goes_where_most_slots_are_free() -> None:
    """A: 1 long request, B: 3 (the pool 4/16). TTL 40 s: the n=8 head waits for a fit until 20 s (the
    midpoint of its wait), then goes as a request of one sequence to A (7 free): 9 of 8, the rest in
    A's own queue, as vLLM runs what fits."""
    clock = Clock()
    d = director(clock, defaultRequestTTL="40s")
    flow = d.flow
    assert flow is not None
    a, b = d.store.all()
    for i in range(4):
        r = request(f"r{i}", "chat")
        d.on_dispatched(r, a if i < 1 else b)
        d.on_first_token(r, a if i < 1 else b)
    big = request("big", "batch", n=SLOTS)
    assert not isinstance(flow.arrive(big, 0.0, None), PickResult)
    at = None
    while at is None and clock.now < 40.0:
        clock.now += 0.5
        for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
            got = flow.settle(item, clock.now)
            assert isinstance(got, PickResult) and item.req is big
            at, where = clock.now, got.primary
    assert at == 20.0 and where is a


def test_a_critical_request_of_several_sequences_stops_the_one_that_gives_it_room() -> None:
    """preemption: A runs 1 streamed sheddable request (no first token), B 2. A critical n=8 head: stopping
    A's gives A 8 free slots (B's would leave 7): A's is stopped, the head sent to A, 8 of 8."""
    clock = Clock()
    d = director(clock, preemption=True)
    flow = d.flow
    assert flow is not None
    a, b = d.store.all()
    stopped: list[str] = []
    for i, ep in enumerate((a, b, b)):
        v = request(f"v{i}", "bulk", priority=-1, stream=True)
        d.on_dispatched(v, ep)
        d.preemptible(v, ep, lambda rid=v.request_id: stopped.append(rid) or True)
    critical = request("critical", "chat", n=SLOTS, priority=5)
    got = flow.arrive(critical, 0.0, None)
    if not isinstance(got, PickResult):
        for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
            got = flow.settle(item, clock.now)
    assert isinstance(got, PickResult)
    assert stopped == ["v0"] and got.primary is a and a.inflight.requests == SLOTS
