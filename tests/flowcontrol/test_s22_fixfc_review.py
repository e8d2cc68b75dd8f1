"""Review s22-fixfc (rev-fixfc22): the wait for a fit (main 4a456add), from
/work/team/reviews/s22-fixfc-tests/. The real Director on a simulated pool (2 servers x 8 slots, the
helpers of tests/flowcontrol/test_sequences_overflow.py), injected clock, no process started. fixfc22b
removed the wait for a fit: r1's second assert (the drain's intent: c0 sent to the server not drained) now
asserts the rule that replaced it, and r4 (finding R3) runs on a saturated pool, where preemption asks."""

from __future__ import annotations

from flowcontrol.test_sequences_overflow import SLOTS, Clock, director, dispatch, request, run
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import PickResult, Usage


def test_r1_two_waiters_do_not_drain_the_whole_pool_while_n1_requests_wait() -> None:
    """One long request per server (2 of 16 slots used), two n=8 requests (flows a, b) and n=1 requests
    of flow c (same band) and of a lower band. Each waiter drains its own server (W1: A, W2: the most
    free of the rest: B), so the n=1 requests see no candidate at all and wait, 14 slots idle, until the
    waiters' midpoint (15 s of the default 30 s TTL). Expected: something goes within 10 s (b82d496 sent
    both waiters at once). fixfc22b (no wait for a fit): both go at the first pass, one to each server
    (9 of 8: one sequence queued in each), and c0 goes as soon as a slot frees."""
    clock = Clock()
    d = director(clock)
    placed = [(request("long0", "x"), 0), (request("long1", "x"), 1)]
    queued = [request("w1", "a", n=SLOTS), request("w2", "b", n=SLOTS)]
    queued += [request(f"c{i}", "c") for i in range(4)] + [request("low", "d", priority=-1)]
    sent = run(d, clock, queued, placed)
    for t in (0.02, 1.0, 5.0, 10.0):
        clock.now = t
        dispatch(d, clock, sent)
    assert sent, "nothing sent by 10 s on a pool with 14 of 16 slots free"
    assert sorted(sent) == ["w1", "w2"] and len(set(sent.values())) == 2, sent
    a = d.store.get(sent["w1"])
    assert a is not None and a.inflight.requests == SLOTS + 1
    d.on_finished(request("w1", "a", n=SLOTS), a, Usage(10, 800), True)
    clock.now = 11.0
    dispatch(d, clock, sent)
    assert "c0" in sent, f"sent by 11 s: {sorted(sent)}"


def test_r2_preemption_for_an_n1_head_does_not_stop_a_request_on_the_drained_server_to_overfill_another(
) -> None:  # fmt: skip
    """freeSlotPick off, preemption on. A: 1 running + 1 streamed sheddable request without a first token
    (6 free: no fit for the critical n=8 head W); B: 8 of 8. W waits, A drains. A critical n=1 head R of
    another flow: its gate leaves A out (draining) and finds B full, so preemption runs on R's full
    candidates, stops the sheddable request on A, and R's late pick keeps off A (passed home): R goes to
    B, 9 of 8. On b82d496 (no draining) R's gate found room (10 of 16) and nothing was stopped.
    Expected: no request stopped for R, or R placed where the stop freed room."""
    clock = Clock()
    d = director(clock, preemption=True, freeSlotPick=False)
    flow = d.flow
    assert flow is not None
    a, b = d.store.all()
    d.on_dispatched(request("runA", "x"), a)
    d.on_first_token(request("runA", "x"), a)
    stopped: list[str] = []
    v = request("victim", "bulk", priority=-1, stream=True)
    d.on_dispatched(v, a)
    d.preemptible(v, a, lambda: stopped.append("victim") or True)
    for i in range(SLOTS):
        r = request(f"b{i}", "x")
        d.on_dispatched(r, b)
        d.on_first_token(r, b)
    w = request("w", "batch", n=SLOTS, priority=5)
    r = request("r", "chat", priority=5)
    sent = run(d, clock, [w, r], [])
    clock.now = 0.02
    for item in dispatch_ready(flow.ctl, clock.now, flow.saturated, flow.preempt):
        got = flow.settle(item, clock.now)
        assert isinstance(got, PickResult)
        sent[item.req.request_id] = got.primary.address
    assert not (stopped and sent.get("r") == b.address), (
        f"stopped {stopped} on A for r, r sent to B: {b.inflight.requests} of {SLOTS}"
    )


def test_r3_three_fit_waiters_alone_on_an_idle_pool_wait_to_their_midpoint() -> None:
    """docs/flowcontrol.md "Only while others wait": a pass that meets no head but fit-waiters sends the
    first at once. One long request per server (14 of 16 slots free), three n=8 requests and nothing else
    queued: W1 drains A, W2 drains B, W3 then has no candidate left, so its gate reads "saturated" (not
    "unfit"), it blocks the walk, the ``for ... else`` that sets ``alone`` never runs, and none of the
    three is sent until 15 s (the midpoint of the 30 s TTL). With two waiters the first goes at once."""
    clock = Clock()
    d = director(clock)
    placed = [(request("long0", "x"), 0), (request("long1", "x"), 1)]
    queued = [request(f"w{i}", f"f{i}", n=SLOTS) for i in range(3)]
    sent = run(d, clock, queued, placed)
    for t in (0.02, 1.0, 5.0, 10.0):
        clock.now = t
        dispatch(d, clock, sent)
    assert sent, "none of the three n=8 requests sent by 10 s on a pool with 14 of 16 slots free"


def _victim_on_a(d: Director, running_on_a: int) -> list[str]:
    """A: one streamed sheddable n=2 request without a first token (2 sequences) + ``running_on_a``
    running; B: 8 of 8. Returns the list the victim's stop appends to."""
    a, b = d.store.all()
    stopped: list[str] = []
    v = request("victim", "bulk", n=2, priority=-1, stream=True)
    d.on_dispatched(v, a)
    d.preemptible(v, a, lambda: stopped.append("victim") or True)
    for ep, count in ((a, running_on_a), (b, SLOTS)):
        for i in range(count):
            r = request(f"{ep.address}-{i}", "x")
            d.on_dispatched(r, ep)
            d.on_first_token(r, ep)
    return stopped


def test_r4_preemption_counts_the_victims_sequences_when_it_asks_for_a_fit() -> None:
    """``fits(freed=...)`` took one sequence off the victim's server (saturation.py ``gone = 1``). The
    review's pool had free slots (A: the victim only), where preemption no longer runs (fixfc22b: it asks
    only for a head the gate holds): so A also runs 6 (8 of 8, B 8 of 8, saturated). A critical n=2 head:
    stopping the victim frees 2 slots on A (a fit); with ``gone = 1`` ``fits`` counted 8 - 1 + 2 = 9 > 8,
    so nothing was stopped and the head waited for a slot."""
    clock = Clock()
    d = director(clock, preemption=True)
    assert d.flow is not None
    a, _b = d.store.all()
    stopped = _victim_on_a(d, SLOTS - 2)
    assert a.inflight.requests == SLOTS
    sent = run(d, clock, [request("critical", "chat", n=2, priority=5)], [])
    clock.now = 0.02
    dispatch(d, clock, sent)
    assert stopped == ["victim"] and sent.get("critical") == a.address, (stopped, sent)
    assert a.inflight.requests == SLOTS


def test_r4_on_a_pool_with_a_free_slot_nothing_is_stopped_and_it_goes_where_most_are_free() -> None:
    """The review's own pool (A: the victim only, B: 8 of 8), a critical n=8 head: the gate finds a free
    slot, so it leaves at once with no stop, to A (6 free): 10 of 8, 2 of its sequences queued there."""
    clock = Clock()
    d = director(clock, preemption=True)
    a, _b = d.store.all()
    stopped = _victim_on_a(d, 0)
    sent = run(d, clock, [request("critical", "chat", n=SLOTS, priority=5)], [])
    clock.now = 0.02
    dispatch(d, clock, sent)
    assert stopped == [] and sent.get("critical") == a.address, (stopped, sent)
    assert a.inflight.requests == 2 + SLOTS
