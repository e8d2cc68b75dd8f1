"""Review s19-fixes-b L1 (the reviewer's test): a dispatch pass ended at PASS_OVER_MAX heads passed over:
with more than 64 heads pinned to full homes in a band (many Responses conversations on a few busy homes),
the band's plain requests and every lower band waited while the rest of the pool had room, pass after pass
(the same 64 heads first each pass: global-strict orders by arrival), until a home freed. Now the bound
counts distinct subsets; a head pinned to one already found full this pass costs a heap step, no gate call."""

from __future__ import annotations

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import PASS_OVER_MAX, FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def req(rid: str, flow: str, home: str | None = None, priority: int = 0) -> InferenceRequest:
    subset = None if home is None else frozenset({home})
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow, subset=subset, priority=priority
    )


def test_a_plain_request_goes_while_the_pool_has_room_past_many_pinned_heads() -> None:
    c = FlowController(FlowControlConfig())
    for i in range(PASS_OVER_MAX + 1):  # follow-ups pinned to 2 busy homes
        c.enqueue(req(f"p{i}", f"s{i}", home=f"10.0.0.{i % 2}:8000"), 0.0)
    c.enqueue(req("u", "v"), 0.0)
    room = 4  # the rest of the pool: room for 4 plain requests

    def saturated(r: InferenceRequest) -> bool:
        return r.subset is not None or room <= 0

    sent = []
    for _ in range(3):  # three passes (recheck wakes): nothing has freed at the homes
        for item in dispatch_ready(c, 1.0, saturated):
            sent.append(item.req.request_id)
            room -= 1
    assert sent == ["u"], f"pool with room for {room}: sent {sent}"


def test_no_number_of_pinned_heads_ends_a_pass() -> None:
    """fc20: the heads pinned to a full home wait aside (parked), with no bound: before, past
    PASS_OVER_MAX_HEADS (1,024) heads passed over the pass ended, and u waited with every band below."""

    def run(n: int) -> list[str]:
        c = FlowController(FlowControlConfig())
        for i in range(n):
            c.enqueue(req(f"p{i}", f"s{i}", home="10.0.0.1:8000"), 0.0)
        c.enqueue(req("u", "v"), 0.0)
        return [i.req.request_id for i in dispatch_ready(c, 1.0, lambda r: r.subset is not None)]

    assert run(1024) == ["u"]
    assert run(2000) == ["u"]
