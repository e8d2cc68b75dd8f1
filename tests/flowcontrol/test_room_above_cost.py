"""Review s20-fixes-b M1 (fixed: a walk that found every home above a band full is made once a pass for
that band): 44f0ee9's ``_room_above`` walked every parked home of a higher band for each
request it is about to dispatch (a request with no subset: ``parked_above`` lists all of them, then skips
those already found full this pass), so a pass sending K plain requests costs K x H key visits with H
higher-band homes parked, and every pass asks all H homes (one gate call each) where the sweep asked at most
PARK_SWEEP (64) per 20 ms. Measured (scripts/fb_above_cost.py, one flow, nice 10, load ~4.5): 5,000 band-10
homes parked, 200 band-0 plain requests in one pass: 753 ms a pass, 3.8 ms a request, 5,200 gate calls
(ab1ba7c: 0.6 ms, 200 gate calls). Counted, not timed."""

from __future__ import annotations

from typing import Any

from kvgate.flowcontrol import controller as ctl_mod
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest


def test_a_pass_of_plain_requests_does_not_walk_every_parked_higher_band_home_per_request(
    monkeypatch: Any,
) -> None:
    h, k = 1000, 200
    c = FlowController(FlowControlConfig(ttl=1e9, max_requests=10**6))
    for i in range(h):
        c.enqueue(
            InferenceRequest(f"h{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id="s",
                             subset=frozenset({f"10.0.{i // 250}.{i % 250}:8000"}), priority=10),
            0.0,
        )  # fmt: skip
    calls = [0]

    def gate(r: InferenceRequest) -> bool:
        calls[0] += 1
        return r.subset is not None  # (every home full; the rest of the pool has room)

    assert list(dispatch_ready(c, 0.0, gate)) == [] and c.parked == h
    for j in range(k):
        c.enqueue(InferenceRequest(f"l{j}", "m", prompt_tokens=10, max_tokens=4, fairness_id="l"), 0.001)
    visits = [0]
    orig = getattr(ctl_mod.FlowController, "parked_above", None)
    if orig is not None:

        def counted(self: FlowController, req: InferenceRequest, priority: int) -> Any:
            got = orig(self, req, priority)
            visits[0] += len(got)
            return got

        monkeypatch.setattr(ctl_mod.FlowController, "parked_above", counted)
    calls[0] = 0
    sent = list(dispatch_ready(c, 0.002, gate))  # (2 ms on: no sweep due)
    assert len(sent) == k
    assert visits[0] <= 2 * h + k, f"{visits[0]} parked-home visits for {k} requests sent ({h} homes parked)"
