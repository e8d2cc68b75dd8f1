"""A request of several sequences is never held for a server with room for all of them (fixfc22b, the
lead's rule after reviews s22-fc F1 and s22-fixfc R1-R5): it leaves for a free slot as any request, goes
where all its sequences fit when a server has the room, else where the most running slots are free (the
rest wait in that server's own queue, as vLLM schedules sequences), and the requests behind it go on. The
real Director on a simulated pool (2 servers x 8 slots), injected clock, no process started. The helpers
serve tests/flowcontrol/test_s22_fixfc_review.py too.
"""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest, PickResult

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


def test_it_goes_at_once_where_most_slots_are_free_and_the_requests_behind_it_go_on() -> None:
    """A: 2 running, B: 3 (no server with 8 free), 8 n=1 requests queued behind the n=8 head. The head goes
    at the first pass to A (6 free: 10 of 8, 2 of its sequences queued there), and the n=1 requests go on
    to B until the pool's mean is full (the gate as before fc22: A's 10 of 8 count, so 3 go). fixfc22 held
    the head and A for it while B filled."""
    clock = Clock()
    d = director(clock, defaultRequestTTL="60s")
    a, b = d.store.all()
    running = [request(f"r{i}", "chat") for i in range(5)]
    big = request("big", "batch", n=SLOTS)
    sent = run(d, clock, [big] + [request(f"s{i}", "small") for i in range(8)],
               [(r, 0 if i < 2 else 1) for i, r in enumerate(running)])  # fmt: skip
    clock.now = 0.02
    dispatch(d, clock, sent)
    assert sent.pop("big") == a.address and a.inflight.requests == 2 + SLOTS
    assert sorted(sent) == [f"s{i}" for i in range(3)] and set(sent.values()) == {b.address}, sent
    assert b.inflight.requests == 6


def test_alone_on_a_pool_with_room_it_goes_at_once_where_most_slots_are_free() -> None:
    """A: 1 long request, B: 2, nothing else queued (14 of 16 slots free, no server with 8): it goes on
    arrival to A (7 free), as vLLM takes it (7 run, 1 waits)."""
    clock = Clock()
    d = director(clock, defaultRequestTTL="40s")
    a, _b = d.store.all()
    big = request("big", "batch", n=SLOTS)
    sent = run(d, clock, [big], [(request(f"r{i}", "chat"), 0 if i < 1 else 1) for i in range(3)])
    clock.now = 0.02
    dispatch(d, clock, sent)
    assert sent.get("big") == a.address
