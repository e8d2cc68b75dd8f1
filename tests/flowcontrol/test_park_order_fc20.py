"""fc20: parking heads aside for their full homes changes no dispatch order. Property test against a
reference that parks nothing: at each step it walks the queued requests in policy order (highest band first;
in a band, global-strict with fcfs: arrival order; round-robin, the default: the flows in turn order, each
flow's requests in arrival order, a flow moved to the back when one of its requests goes), and the first that
can go goes; a request pinned to a full home is skipped; a plain one that finds the pool full ends the pass
(strict priority). Told of every freed slot (``freed``), the controller's parked heads must give the same
sequence. Untold (review s20-fc M1: a home freed by a scrape or another worker), a parked home is found with
room only by the sweep (once per ``sweep_every``: "sweep" steps) or when a request could take its place, so
between sweeps the sequence may lag the reference's; then each request sent must be one the reference could
send in its turn by strict priority (no queued request of a higher band wanted the place it took), and after a
sweep's pass nothing the reference would send is left."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

HOMES = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


@dataclass
class Ref:
    band: int
    seq: int
    rid: str
    home: str | None
    flow: str = ""


class World:
    """The capacity both sides see: ``room`` plain requests, ``free[home]`` pinned ones per home."""

    def __init__(self) -> None:
        self.room = 0
        self.free = dict.fromkeys(HOMES, 0)

    def saturated(self, r: InferenceRequest) -> bool:
        if r.subset is not None:
            return self.free[next(iter(r.subset))] <= 0
        return self.room <= 0

    def take(self, home: str | None) -> None:
        if home is None:
            self.room -= 1
        else:
            self.free[home] -= 1


class Reference:
    def __init__(self, fairness: str) -> None:
        self.fairness = fairness
        self.queue: list[Ref] = []
        self.turns: dict[int, list[str]] = {}  # round-robin: each band's flows, whose turn first

    def enqueue(self, r: Ref) -> None:
        self.queue.append(r)
        turns = self.turns.setdefault(r.band, [])
        if r.flow not in turns:
            turns.append(r.flow)

    def order(self) -> list[Ref]:
        by_band = sorted(self.queue, key=lambda r: (-r.band, r.seq))
        if self.fairness == "global-strict":
            return by_band
        turns = self.turns
        return sorted(by_band, key=lambda r: (-r.band, turns[r.band].index(r.flow), r.seq))

    def dispatched(self, r: Ref) -> None:
        self.queue.remove(r)
        turns = self.turns[r.band]
        turns.remove(r.flow)
        if any(q.band == r.band and q.flow == r.flow for q in self.queue):
            turns.append(r.flow)  # (round-robin: to the back; a flow with nothing queued leaves)

    def run_pass(self, w: World) -> list[str]:
        out = []
        while True:
            for r in self.order():
                if r.home is not None:
                    if w.free[r.home] <= 0:
                        continue
                elif w.room <= 0:
                    return out
                w.take(r.home)
                self.dispatched(r)
                out.append(r.rid)
                break
            else:
                return out


op = st.one_of(
    st.tuples(
        st.just("enq"), st.sampled_from([0, 5, 10]), st.integers(0, 3), st.sampled_from([None, *HOMES])
    ),
    st.tuples(st.just("home"), st.sampled_from(HOMES)),
    st.tuples(st.just("room"), st.integers(1, 2)),
    st.tuples(st.just("pass")),
    st.tuples(st.just("sweep")),
)


def run(ops: list[tuple[object, ...]], told: bool, fairness: str) -> None:
    c = FlowController(FlowControlConfig(fairness=fairness))
    c.sweep_every = 1.0  # (steps are 1 ms apart: untold, a home is swept only at a "sweep" step)
    mine, ref = World(), World()
    reference = Reference(fairness)
    refs: dict[str, Ref] = {}
    sent: list[str] = []
    want: list[str] = []
    now = 0.0
    for i, o in enumerate(ops):
        now += 1e-3
        if o[0] == "enq":
            _, band, flow, home = o
            assert isinstance(band, int) and (home is None or isinstance(home, str))
            rid = f"r{i}"
            subset = None if home is None else frozenset({home})
            c.enqueue(
                InferenceRequest(
                    rid, "m", prompt_tokens=10, max_tokens=4, fairness_id=f"f{flow}", subset=subset,
                    priority=band,
                ),
                now,
            )  # fmt: skip
            refs[rid] = Ref(band, i, rid, home, f"f{flow}")
            reference.enqueue(refs[rid])
        elif o[0] == "home":
            home = o[1]
            assert isinstance(home, str)
            mine.free[home] += 1
            ref.free[home] += 1
            if told:
                c.freed(home)
        elif o[0] == "room":
            n = o[1]
            assert isinstance(n, int)
            mine.room += n
            ref.room += n
        elif told:
            for item in dispatch_ready(c, now, mine.saturated):
                sent.append(item.req.request_id)
                sub = item.req.subset
                mine.take(None if sub is None else next(iter(sub)))
            want += reference.run_pass(ref)
            assert sent == want
        else:
            if o[0] == "sweep":
                now += c.sweep_every  # (every parked home asked: fewer than PARK_SWEEP)
            for item in dispatch_ready(c, now, mine.saturated):
                r = refs[item.req.request_id]
                # Strict priority: nothing queued of a higher band wanted the place it takes.
                above = [
                    q.rid for q in reference.queue if q.band > r.band and q.home == r.home and q is not r
                ]
                assert not above, f"{r.rid} (band {r.band}) took the place {above} of a higher band waits for"
                mine.take(r.home)
                reference.dispatched(r)
            if o[0] == "sweep":
                left = copy.deepcopy(reference).run_pass(copy.deepcopy(mine))
                assert not left, f"after a sweep, still queued though they could go: {left}"
    assert len(c) == len(reference.queue)


@pytest.mark.parametrize("fairness", ["global-strict", "round-robin"])
@pytest.mark.parametrize("told", [True, False], ids=["told", "untold"])
@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op, max_size=60))
# Review s20-fc M1: a band-10 head parked for a home, the home freed untold, a band-0 request for it.
@example(ops=[("enq", 10, 0, HOMES[0]), ("pass",), ("home", HOMES[0]), ("enq", 0, 1, HOMES[0]), ("pass",)])
def test_parked_heads_keep_the_reference_order(
    ops: list[tuple[object, ...]], told: bool, fairness: str
) -> None:
    run(ops, told, fairness)
