"""``FlowController.waited_for`` is asked for every candidate of every late pick made while heads are parked
(the Director's ``_not_passed_homes``): it reads a count kept per address, not the parked homes there (review
s20-fixes-b L1: ``any`` over every parked home holding the address, per candidate). Fails on main 7789ac4 (it
walked the 1,000 homes parked at the address). Pure, injected time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

A = "10.0.0.1:8000"


class CountingSet(set):  # type: ignore[type-arg]
    """A set that counts the walks over it."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        CountingSet.walks += 1
        return super().__iter__()


def pinned(rid: str, subset: frozenset[str], priority: int = 0) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=rid, subset=subset,
                            priority=priority)  # fmt: skip


def test_waited_for_does_not_walk_the_homes_parked_at_the_address() -> None:
    c = FlowController(FlowControlConfig(ttl=60.0))
    for i in range(1000):  # 1,000 homes (subsets) sharing A, all of band 0
        c.enqueue(pinned(f"p{i}", frozenset({A, f"10.0.1.{i}:8000"})), 0.0)
    assert list(dispatch_ready(c, 0.0, lambda r: r.subset is not None)) == []
    assert c.parked == 1000
    c._parked_at[A] = CountingSet(c._parked_at[A])
    CountingSet.walks = 0
    assert not c.waited_for(A, 1)  # (a higher band: none of them keeps it off)
    assert c.waited_for(A, 0) and c.waited_for(A, -1)
    assert CountingSet.walks == 0, "waited_for walked the parked homes at the address"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([-1, 0, 2]), st.booleans()), max_size=30))
def test_waited_for_agrees_with_the_parked_homes(ops: list[tuple[int, int, bool]]) -> None:
    """The count kept per address says what the parked homes say, as homes are parked and woken."""
    c = FlowController(FlowControlConfig(ttl=60.0))
    addrs = [f"10.0.0.{i}:8000" for i in range(4)]
    for n, (i, band, wake) in enumerate(ops):
        sub = frozenset({addrs[i % 4], addrs[(i + 1) % 4] if i > 3 else addrs[i % 4]})
        if wake and c._parked:
            key = next(iter(c._parked))
            c.wake(key)
        else:
            c.enqueue(pinned(f"r{n}", sub, band), 0.0)
            list(dispatch_ready(c, 0.0, lambda r: r.subset is not None))
        for a in addrs:
            for prio in (-2, -1, 0, 1, 2, 3):
                want = any(k[2] >= prio for k in c._parked if a in k[1])
                assert c.waited_for(a, prio) == want
