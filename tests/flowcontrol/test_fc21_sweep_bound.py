"""s21-fc review F1: docs/flowcontrol.md and CHANGELOG (fc21) say a head woken that does not go leaves the
rest to the next pass that meets the home or the sweep, "never parked behind a free slot for longer than a
sweep interval". The sweep looks at PARK_SWEEP (64) homes an interval, the least recently looked first, and
the home just woken went to the back of that order: with 200 parked homes, when the woken head left without
going to its home (client gone, deadline, soft pin given up and sent elsewhere), the heads behind waited ~4
intervals. Now its leaving has the home looked at in the next pass. Pure, injected time, no sleeps."""

from __future__ import annotations

import pytest

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

A = "10.0.0.1:8000"


def pinned(rid: str, flow: str, home: str) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=flow,
                            subset=frozenset({home}))  # fmt: skip


@pytest.mark.parametrize("leaves", ["cancelled", "ttl", "soft-pin given up"])
def test_heads_behind_a_woken_head_that_left_go_within_one_sweep_interval(leaves: str) -> None:
    c = FlowController(FlowControlConfig(ttl=1e9))
    free: dict[str, int] = {}

    def gate(r: InferenceRequest) -> bool:  # (flow x is held back by its own share at A; homes by their room)
        if r.subset is None:  # (x0 unpinned: it goes anywhere, the pool has room)
            return False
        if r.fairness_id == "x":
            return True
        return free.get(next(iter(r.subset)), 0) <= 0

    r = pinned("x0", "x", A)
    r.subset_soft = leaves == "soft-pin given up"  # (given up at 1 ms, the midpoint of its 2 ms)
    x = c.enqueue(r, 0.0, bound=1e9 if leaves == "cancelled" else 2e-3)
    c.enqueue(pinned("y0", "y", A), 0.0)
    c.enqueue(pinned("y1", "y", A), 0.0)
    for i in range(199):  # (other homes, full the whole time)
        c.enqueue(pinned(f"o{i}", f"o{i}", f"10.1.{i}.1:8000"), 0.0)
    assert list(dispatch_ready(c, 0.0, gate)) == [] and c.parked == 202
    free[A] = 2
    c.freed(A)
    went = [item.req.request_id for item in dispatch_ready(c, 1e-3, gate)]
    if leaves == "soft-pin given up":  # (woken, then its pin given up in the same pass: sent elsewhere)
        assert went == ["x0"] and x.req.subset is None
    else:
        assert went == []  # (x0 woken, held back by its flow)
    if leaves == "cancelled":
        assert c.cancel(x, 2e-3)  # (its client leaves: nothing tells the dispatcher of A again)
    elif leaves == "ttl":
        assert c.expire(2e-3) == [x]
    now, sent = 2e-3, []
    while now < 1.0 and len(sent) < 2:
        now += c.sweep_every / 4
        for item in dispatch_ready(c, now, gate):
            free[A] -= 1
            sent.append(item.req.request_id)
    assert sent == ["y0", "y1"]
    waited = now - 2e-3
    assert waited <= c.sweep_every + 1e-9, (
        f"y0/y1 parked {waited * 1e3:.0f} ms behind a free slot ({waited / c.sweep_every:.1f} sweep "
        "intervals)"
    )
