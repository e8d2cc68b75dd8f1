"""Review s19-fixes-b I1: the dispatch gate (``Director.saturated``, also the mark's and the room check's)
called ``candidates``, which dropped a soft pin (a Responses follow-up queued for its home) when the home
was gone *or momentarily not ready*: a predicate changed the request, and one failed health check sent
every follow-up queued there elsewhere for good (vLLM answers 404 there). Now only the real pick drops it,
and only when the home has left the pool; a home not ready keeps its follow-ups waiting. Injected clock."""

from __future__ import annotations

from flowcontrol.test_pass_over import A, director
from kvgate.datalayer.store import EndpointStore
from kvgate.flowcontrol.dispatcher import dispatch_ready
from kvgate.scheduling.types import InferenceRequest

B = "10.0.0.2:8000"


def follow_up(rid: str) -> InferenceRequest:
    r = InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, fairness_id="t", subset=frozenset({A}))
    r.subset_soft = True
    return r


def test_the_gate_does_not_change_the_request() -> None:
    d = director([B])  # the home A is not (or no longer) in the pool
    r = follow_up("f")
    assert d.saturated(r) is False  # judged as any request: B has room
    assert r.subset == frozenset({A}) and r.subset_soft  # (before: dropped by the check)
    assert d.pick(r).primary.address == B  # the real pick drops it: picked as any request
    assert r.subset is None and not r.subset_soft


def test_a_queued_follow_up_waits_while_its_home_is_not_ready() -> None:
    d = director([A, B])
    flow = d.flow
    assert flow is not None
    a = d.store.all()[0]
    a.healthy = False  # a failed passive health check: the home is in the pool, not ready
    r = follow_up("f")
    flow.ctl.enqueue(r, 0.0)
    sent = [item.req.request_id for item in dispatch_ready(flow.ctl, 0.0, d.saturated)]
    assert sent == [] and r.subset == frozenset({A}) and r.subset_soft, (sent, r.subset)  # (before: to B)
    a.healthy = True  # back: the follow-up goes home (its home asked again by the next sweep: fc20)
    got = []
    later = flow.ctl.sweep_every
    for item in dispatch_ready(flow.ctl, later, d.saturated):
        got.append(flow.settle(item, later).primary.address)  # type: ignore[union-attr]
    assert got == [A], got


def test_a_reloaded_pool_without_the_home_picks_it_as_any_request() -> None:
    d = director([A, B])
    d.store = EndpointStore.from_addresses([B])  # (the home gone from the pool)
    r = follow_up("f")
    assert d.pick(r).primary.address == B and r.subset is None
