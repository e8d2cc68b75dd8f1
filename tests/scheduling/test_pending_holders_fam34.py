"""``pendingHolders`` (issue #16, fam34): a pick's blocks enter the approximate index at its first token.

Until then its endpoint is a pending holder: a later request with the same prefix matches it as deep (it
will hit once that prefill has run, as the engine shares a computed block), but a request that fails
before its first token leaves no holder behind. Off: the pick itself records the endpoint (the reference).
"""

from __future__ import annotations

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import CycleState, Params
from kvgate.scheduling.plugins.prefix_cache import (
    ApproxPrefixCacheProducer,
    PrefixCacheScorer,
    prefix_match,
)
from kvgate.scheduling.types import InferenceRequest, Usage

from .helpers import ep

Q = "the tenant's long system prompt, say " * 40  # ~1,480 characters: 23 blocks of 64


def _director(pending: bool) -> tuple[Director, PrefixCacheScorer, Endpoint, Endpoint]:
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "prefix-cache-scorer":
            spec.parameters = {**(spec.parameters or {}), "pendingHolders": pending}
    a, b = ep("a:1"), ep("b:1")
    d = build_director(cfg, EndpointStore([a, b]), clock=lambda: 0.0, seed=0)
    scorer = d.handle.plugin("prefix-cache-scorer")
    assert isinstance(scorer, PrefixCacheScorer) and scorer.pending_holders is pending
    return d, scorer, a, b


def _req(rid: str, question: str) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_text=Q + question, max_tokens=16)


def _match(scorer: PrefixCacheScorer, d: Director, question: str) -> tuple[dict[str, int], int]:
    """What a new request for Q + ``question`` matches (pending picks included), and the blocks of it
    the index itself records at a (pending picks aside)."""
    cycle = CycleState(_req("probe", question), 0.0)
    scorer.prepare(cycle, d.store.all())
    m = prefix_match(cycle)
    assert m is not None and len(m.hashes) == 23
    return m.matched, scorer.index.match(m.hashes, ["a:1"])[0]


def _held(scorer: PrefixCacheScorer, d: Director) -> int:
    return _match(scorer, d, "probe")[1]


def _dispatch(d: Director, r: InferenceRequest) -> Endpoint:
    got = d.pick(r).primary
    d.on_dispatched(r, got)
    return got


def test_the_endpoint_holds_the_blocks_at_the_first_token_not_at_the_pick() -> None:
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000  # b busy: q1 goes to a
    q1 = _req("q1", "first question")
    assert _dispatch(d, q1) is a
    assert _held(scorer, d) == 0  # its prefill has not run: pending, not in the index
    d.on_first_token(q1, a)
    assert _held(scorer, d) == 23  # the engine computed them: a holds Q
    d.on_finished(q1, a, Usage(370, 16, 0), True)
    assert _held(scorer, d) == 23
    # Off (the reference): the pick records it at once.
    d2, s2, a2, b2 = _director(False)
    b2.inflight.requests, b2.inflight.pending_prefill_tokens = 8, 50_000
    assert _dispatch(d2, _req("q1", "first question")) is a2
    assert _held(s2, d2) == 23


def test_a_request_waiting_on_a_pending_holder_matches_it_as_deep() -> None:
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    assert _dispatch(d, _req("q1", "first question")) is a
    matched, held = _match(scorer, d, "second question")
    assert held == 0 and matched == {"a:1": 23}  # q2 will hit at a once q1's prefill has run


def test_a_request_that_fails_before_its_first_token_leaves_no_holder() -> None:
    for pending, left in ((True, 0), (False, 23)):
        d, scorer, a, b = _director(pending)
        b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
        q1 = _req("q1", "first question")
        assert _dispatch(d, q1) is a
        d.on_finished(q1, a, None, False)  # the replica failed it: nothing was computed
        assert _match(scorer, d, "second question")[0].get("a:1", 0) == left, pending
        assert not scorer._pending and not scorer._pending_at


def test_a_reply_read_whole_holds_the_blocks_when_it_succeeded() -> None:
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    q1 = _req("q1", "first question")
    assert _dispatch(d, q1) is a
    d.on_whole(q1, a, Usage(370, 16, 0), True)  # a non-streamed answer: no first token told observers
    assert _held(scorer, d) == 23 and not scorer._pending


def test_a_removed_endpoint_drops_its_pending_picks() -> None:
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    assert _dispatch(d, _req("q1", "first question")) is a
    assert "a:1" in scorer._pending_at
    d.store.remove("a:1")
    assert not scorer._pending and not scorer._pending_at


def test_the_producer_passes_it_on() -> None:
    got = ApproxPrefixCacheProducer.scorer_parameters(Params({"pendingHolders": True}, "p"))
    assert got["pendingHolders"] is True
