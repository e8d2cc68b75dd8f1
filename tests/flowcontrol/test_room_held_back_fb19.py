"""Review s19-fixes-b H1: 87865f2 asked "has the pool room?" past a pinned head with the *pinned head's own
request* (subset dropped), but the gate is per flow: Director.saturated answers True earlier for a held-back
flow (fairShareHeadroom: ``saturated_reserving``; fairShareRunningReserve: ``_reserve_full``). A pinned
head of an over-share flow then read the pool as full, its whole band was skipped and a LOWER band's
request went while the band's next choice (a flow the pool has room for) waited: strict priority broken.
Now asked for a flow no fair-share rule holds back (``ROOM_FLOW``). The first test's gate mirrors
Director.saturated's held-back rule (the reviewer's test); the second goes through a real Director."""

from __future__ import annotations

from flowcontrol.test_running_reserve import Clock, director
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def req(rid: str, flow: str, home: str | None = None, priority: int = 0) -> InferenceRequest:
    subset = None if home is None else frozenset({home})
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=subset, priority=priority
    )


def test_a_held_back_pinned_head_does_not_let_a_lower_band_go_first() -> None:
    c = FlowController(FlowControlConfig())
    c.enqueue(req("p", "flood", home="10.0.0.1:8000", priority=10), 0.0)  # follow-up, home full
    c.enqueue(req("u", "quiet", priority=10), 0.0)  # under its share: the pool has room for it
    c.enqueue(req("low", "batch", priority=0), 0.0)
    room, headroom = 1, 1  # one free slot, kept (headroom) for flows not held back

    def saturated(r: InferenceRequest) -> bool:  # as Director.saturated: a held-back flow sees the headroom
        if r.subset is not None:
            return True
        return room <= (headroom if r.fairness_id == "flood" else 0)

    sent = []
    for item in dispatch_ready(c, 1.0, saturated):
        sent.append(item.req.request_id)
        room -= 1
    assert sent == ["u"], sent


def test_through_a_real_director_the_band_goes_before_a_lower_one() -> None:
    """The same through a Director (concurrency-detector, ``fairShareTTFTTarget``: a flow is held back past
    twice the mean demand, chosen first past the first tier below the mean): the pinned head's flow is over
    its share, the quiet flow in between (neither tier), so global-strict chooses the pinned head first."""
    a_addr, b_addr = "10.0.0.1:8000", "10.0.0.2:8000"
    fc = {"fairShareHeadroom": 0.75, "fairShareTTFTTarget": "50ms"}
    d = director([a_addr, b_addr], max_concurrency=8, max_pending=0, flow_control=fc, clock=Clock())
    assert d.flow is not None
    ctl = d.flow.ctl
    a, b = d.store.all()
    for i in range(8):  # a's running batch full of the flood's: the pinned head's home is saturated
        d.on_dispatched(req(f"f{i}", "flood"), a)
    for i in range(4):
        d.on_dispatched(req(f"q{i}", "quiet"), b)
    d.on_dispatched(req("z", "z"), b)  # the pool at (8/8 + 5/8) / 2: room for 3 more, none held back
    ctl.headroom = 0.75  # (as the TTFT target's adaptation would have it)
    ctl.enqueue(req("p", "flood", home=a_addr, priority=10), 0.0)
    ctl.enqueue(req("u", "quiet", priority=10), 0.0)
    ctl.enqueue(req("low", "batch", priority=0), 0.0)
    assert ctl.over_share("flood") and not ctl.over_share("quiet") and not ctl._under_share()("quiet")
    sent = []
    for item in dispatch_ready(ctl, 0.0, d.saturated):
        sent.append(item.req.request_id)
        d.flow.settle(item, 0.0)  # picked and charged now, as the dispatch task does
    assert sent[:1] == ["u"], sent  # (before: ['low'], the quiet request of the higher band left waiting)
