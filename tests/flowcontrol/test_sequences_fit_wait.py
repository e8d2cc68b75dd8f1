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


def run(d: Director, clock: Clock, queued: list[InferenceRequest], placed: list[tuple[InferenceRequest, int]],
        ) -> dict[str, str]:  # fmt: skip
    """``placed``: requests already running (on endpoint index), ``queued``: arrivals at 0 s."""
    flow = d.flow
    assert flow is not None
    eps = list(d.store.all())
    for r, i in placed:
        d.on_dispatched(r, eps[i])
        d.on_first_token(r, eps[i])
    sent: dict[str, str] = {}
    for r in queued:
        got = flow.arrive(r, 0.0, None)
        if isinstance(got, PickResult):
            sent[r.request_id] = got.primary.address
    return sent


def dispatch(d: Director, clock: Clock, sent: dict[str, str]) -> None:
    flow = d.flow
    assert flow is not None
    for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
        got = flow.settle(item, clock.now)
        assert isinstance(got, PickResult)
        sent[item.req.request_id] = got.primary.address


def test_the_server_with_the_most_free_slots_drains_for_it_and_it_goes_there_whole() -> None:
    """A: 2 running, B: 3 (no server with 8 free), 8 n=1 requests queued behind the n=8 head. The head
    waits; the n=1 requests go to B only (A is held to drain: 5 fill B, 3 wait), and when A's two finish
    the head goes to A: 8 of 8, no overfill."""
    clock = Clock()
    d = director(clock, defaultRequestTTL="60s")
    a, b = d.store.all()
    running = [request(f"r{i}", "chat") for i in range(5)]
    big = request("big", "batch", n=SLOTS)
    sent = run(d, clock, [big] + [request(f"s{i}", "small") for i in range(8)],
               [(r, 0 if i < 2 else 1) for i, r in enumerate(running)])  # fmt: skip
    clock.now = 1.0
    dispatch(d, clock, sent)
    assert "big" not in sent and sorted(sent) == [f"s{i}" for i in range(5)]
    assert set(sent.values()) == {b.address}, sent  # (A held to drain for the head)
    assert a.inflight.requests == 2 and b.inflight.requests == SLOTS
    for r in running[:2]:  # A's two finish
        d.on_finished(r, a, Usage(10, 100), True)
    clock.now = 2.0
    dispatch(d, clock, sent)
    assert sent.get("big") == a.address and a.inflight.requests == SLOTS


def test_it_stops_waiting_at_the_midpoint_of_its_wait_and_goes_where_most_slots_are_free() -> None:
    """A: 1 long request, B: 8 (full), n=1 requests waiting behind the n=8 head. TTL 40 s: the head waits
    for a fit until 20 s (the midpoint of its wait), then goes as a request of one sequence to A (7 free):
    9 of 8, the rest in A's own queue, as vLLM runs what fits."""
    clock = Clock()
    d = director(clock, defaultRequestTTL="40s")
    a, _b = d.store.all()
    big = request("big", "batch", n=SLOTS)
    sent = run(d, clock, [big] + [request(f"s{i}", "small") for i in range(3)],
               [(request(f"r{i}", "chat"), 0 if i < 1 else 1) for i in range(9)])  # fmt: skip
    while "big" not in sent and clock.now < 40.0:
        clock.now += 0.5
        dispatch(d, clock, sent)
    assert clock.now == 20.0 and sent["big"] == a.address and a.inflight.requests == 9


def test_alone_on_a_pool_with_room_it_goes_at_once_where_most_slots_are_free() -> None:
    """A: 1 long request, B: 2, nothing else queued (14 of 16 slots free, no server with 8): no one else
    would use the slots, so it goes at the first pass to A (7 free), as vLLM takes it (7 run, 1 waits)."""
    clock = Clock()
    d = director(clock, defaultRequestTTL="40s")
    a, _b = d.store.all()
    big = request("big", "batch", n=SLOTS)
    sent = run(d, clock, [big], [(request(f"r{i}", "chat"), 0 if i < 1 else 1) for i in range(3)])
    assert "big" not in sent  # (arrived: queued, no server for all of it)
    clock.now = 0.02
    dispatch(d, clock, sent)
    assert sent.get("big") == a.address


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
