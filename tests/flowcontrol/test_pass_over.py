"""Review s18-doors M3: a queued head that waits for its own subset (a Responses follow-up pinned to its
saturated home, a subset hint) waits aside (parked, fc20; passed over for one pass before), so the requests
behind it in its band use the rest of the pool; once its home is found with room it is back in its place,
first in line for its home (its home's capacity goes to it before anything queued after it), and the
requests that go past it meanwhile are picked off its home when the pool has other room
(``Director._pick_late``). Before flw19, it held up its whole band (only lower bands went past it). Pure, on
an injected clock."""

from __future__ import annotations

from typing import Any, Protocol

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.plugins.session import session_digest
from kvgate.scheduling.types import InferenceRequest

A = "10.0.0.1:8000"


def req(rid: str, flow: str = "t", home: str | None = None, priority: int = 0) -> InferenceRequest:
    subset = None if home is None else frozenset({home})
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=subset, priority=priority
    )


class Gate:
    """``home_full``: a request pinned to A is saturated; ``room``: how many others may still go."""

    def __init__(self, home_full: bool, room: int) -> None:
        self.home_full, self.room = home_full, room

    def __call__(self, r: InferenceRequest) -> bool:
        if r.subset is not None:
            return self.home_full
        return self.room <= 0


class RoomGate(Protocol):
    """A saturation gate with ``room`` left for requests not pinned (``Gate``, ``test_park_fc20.Gate``)."""

    room: int

    def __call__(self, r: InferenceRequest) -> bool: ...


def drain(ctl: FlowController, gate: RoomGate, now: float = 1.0) -> list[str]:
    """The ids one dispatch pass sends; each one not pinned takes one of ``gate.room``."""
    out = []
    for item in dispatch_ready(ctl, now, gate):
        out.append(item.req.request_id)
        if item.req.subset is None:
            gate.room -= 1
    return out


def ctl(**cfg: Any) -> FlowController:
    return FlowController(FlowControlConfig(**cfg))


def test_the_requests_behind_a_head_waiting_for_its_home_go() -> None:
    c = ctl()
    for r in (req("p", home=A), req("q"), req("r")):
        c.enqueue(r, 0.0)
    gate = Gate(home_full=True, room=1)
    assert drain(c, gate) == ["q"]  # (before flw19: [], the pinned head held its band)
    # It waits aside for its home: still queued and counted, in no band's selection.
    assert c.parked == 1 and len(c) == 2 and c.head(1.0).req.request_id == "r"  # type: ignore[union-attr]
    assert c.passed_homes == frozenset({A})  # (the late pick keeps the requests going past off its home)


def test_it_is_first_in_line_when_its_home_frees() -> None:
    c = ctl()
    for r in (req("p", home=A), req("q"), req("r"), req("s", home=A)):
        c.enqueue(r, 0.0)
    gate = Gate(home_full=True, room=1)
    assert drain(c, gate) == ["q"]
    gate.home_full, gate.room = False, 5
    c.freed(A)  # (a request there finished: the Director says where)
    assert drain(c, gate) == ["p", "r", "s"]  # (queue order kept)
    assert c.parked == 0 and c.passed_homes == frozenset()


def test_a_home_found_by_the_sweep_gives_its_head_its_place_back() -> None:
    """Not told (a scraped load fell, another worker's request finished there): the sweep, at most once per
    ``sweep_every`` (the first one interval after the first home was parked), finds the home with room;
    before it, the heads stay aside (``s``, pinned to the same home, parked behind ``p``: never ahead)."""
    c = ctl()
    for r in (req("p", home=A), req("q"), req("s", home=A)):
        c.enqueue(r, 0.0)
    gate = Gate(home_full=True, room=1)
    assert drain(c, gate, now=1.0) == ["q"] and c.parked == 2
    gate.home_full = False
    assert drain(c, gate, now=1.0 + c.sweep_every / 2) == []
    assert drain(c, gate, now=1.0 + c.sweep_every) == ["p", "s"]
    c2 = ctl()
    for r in (req("p", home=A), req("q"), req("r")):
        c2.enqueue(r, 0.0)
    gate = Gate(home_full=True, room=1)
    assert drain(c2, gate, now=1.0) == ["q"]
    assert drain(c2, gate, now=1.0) == []
    gate.home_full, gate.room = False, 1
    assert drain(c2, gate, now=1.0 + c2.sweep_every / 2) == ["r"]  # (no sweep yet: p still aside)
    gate.room = 1
    assert drain(c2, gate, now=1.0 + c2.sweep_every) == ["p"]


def test_other_flows_keep_their_turns() -> None:
    """Round robin across flows: parking t's head changes no turn of u's."""
    c = ctl(fairness="round-robin")
    for r in (req("p", "t", home=A), req("u1", "u"), req("t2", "t"), req("u2", "u")):
        c.enqueue(r, 0.0)
    gate = Gate(home_full=True, room=3)
    assert drain(c, gate) == ["t2", "u1", "u2"]  # t's turn (its next request), then u's
    assert len(c) == 1 and c.parked == 1


def test_strict_priority_still_holds_behind_a_blocked_plain_head() -> None:
    """A head waiting on the pool itself (no subset) still holds its band and the bands below."""
    c = ctl()
    c.enqueue(req("hi"), 0.0)
    c.enqueue(req("lo", home=A, priority=-1), 0.0)
    gate = Gate(home_full=False, room=0)
    assert drain(c, gate) == []


def test_lower_bands_go_past_a_band_of_heads_waiting_for_their_homes() -> None:
    c = ctl()
    c.enqueue(req("p1", home=A, priority=1), 0.0)
    c.enqueue(req("p2", "u", home=A, priority=1), 0.0)
    c.enqueue(req("lo", priority=0), 0.0)
    assert drain(c, Gate(home_full=True, room=1)) == ["lo"]
    assert c.parked == 2 and c.head(1.0) is None
    c.freed(A)
    assert drain(c, Gate(home_full=False, room=0)) == ["p1", "p2"]  # (in their order)


def test_a_pass_its_caller_stops_keeps_the_queue_whole() -> None:
    c = ctl()
    for r in (req("p", home=A), req("q"), req("r")):
        c.enqueue(r, 0.0)
    gen = dispatch_ready(c, 1.0, Gate(home_full=True, room=5))
    assert next(gen).req.request_id == "q"
    assert c.passed_homes == frozenset({A})  # (the late pick reads it)
    gen.close()
    assert c.passed == 0 and c.parked == 1 and len(c) == 2
    assert c.head(1.0).req.request_id == "r"  # type: ignore[union-attr]


def test_a_cancelled_head_is_not_put_back() -> None:
    c = ctl()
    p = c.enqueue(req("p", home=A), 0.0)
    c.enqueue(req("q"), 0.0)
    gen = dispatch_ready(c, 1.0, Gate(home_full=True, room=5))
    next(gen)
    assert c.cancel(p, 1.0)
    gen.close()
    assert len(c) == 0 and c.head(1.0) is None and c.parked == 0 and c.passed_homes == frozenset()
    c.freed(A)
    assert drain(c, Gate(home_full=False, room=5)) == []


def test_any_number_of_full_homes_does_not_end_a_pass() -> None:
    # Before fc20 the pass ended past 64 distinct full subsets (PASS_OVER_MAX) or 1,024 heads: q waited.
    c = ctl()
    for i in range(300):
        c.enqueue(req(f"p{i}", home=f"10.1.{i // 250}.{i % 250}:8000"), 0.0)
    c.enqueue(req("q"), 0.0)
    assert drain(c, Gate(home_full=True, room=5)) == ["q"]
    assert c.parked == 300


def test_slo_feasible_overdue_heads_go_back_where_they_were() -> None:
    c = ctl(ordering="slo-feasible")
    c.enqueue(req("p", home=A), 0.0)  # overdue at now=100 (default SLO): in its flow's late heap
    c.enqueue(req("q"), 0.0)
    assert drain(c, Gate(home_full=True, room=1), now=100.0) == ["q"]
    c.freed(A)
    assert drain(c, Gate(home_full=False, room=1), now=100.0) == ["p"]


# -- the Director's late pick: a request going past a waiting head is picked off its home --------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def director(addresses: list[str]) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {},
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
        # A session's last endpoint first (as a prefix scorer would draw a conversation's requests home).
        "plugins": [{"type": "session-affinity-scorer"}, {"type": "queue-scorer"}],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "session-affinity-scorer", "weight": 10},
                    {"pluginRef": "queue-scorer"},
                ],
            }
        ],
    }
    d = build_director(cfg, EndpointStore.from_addresses(addresses), flow_metrics=False, clock=Clock())
    for ep in d.store.all():
        ep.metrics = EndpointMetrics(updated_at=0.0)
    return d


def test_a_request_going_past_is_picked_off_the_waiting_heads_home() -> None:
    addrs = [A, "10.0.0.2:8000", "10.0.0.3:8000"]
    d = director(addrs)
    flow = d.flow
    assert flow is not None
    a = d.store.all()[0]
    busy = InferenceRequest("busy", "m", prompt_tokens=10, max_tokens=4)
    d.on_dispatched(busy, a)  # a full (maxConcurrency 1); the pool's mean 1/3
    session = d.profiles["default"].scorers[0][0]
    session.sessions[session_digest("conv")] = A  # q's session was last served by a (kept by digest)
    # Control: with nothing passed over, a request of that session goes to its session's endpoint.
    q0 = InferenceRequest("q0", "m", prompt_tokens=10, max_tokens=4, fairness_id="t", session_key="conv")
    assert d.pick(q0).primary.address == A
    q = InferenceRequest("q", "m", prompt_tokens=10, max_tokens=4, fairness_id="t", session_key="conv")
    p = req("p", home=A)
    flow.ctl.enqueue(p, 0.0)
    flow.ctl.enqueue(q, 0.0)
    picked = []
    for item in dispatch_ready(flow.ctl, 0.0, d.saturated):
        got = flow.settle(item, 0.0)
        picked.append((item.req.request_id, got.primary.address))  # type: ignore[union-attr]
    assert picked and picked[0][0] == "q" and picked[0][1] != A, picked
