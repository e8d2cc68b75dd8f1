"""The engine's reported cached prompt tokens correct the approximate prefix index (cachedTokensFeedback)."""

from __future__ import annotations

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.openai.protocol import usage_from
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.prefix import PrefixIndex
from kvgate.scheduling.types import InferenceRequest, Usage

from .helpers import ep

Q = "the tenant's long system prompt, say " * 40  # ~1,480 characters: 23 blocks of 64
P = "another tenant's long context, and so " * 40


def test_forget_through_drops_what_was_touched_at_or_before_in_touch_order() -> None:
    idx = PrefixIndex(default_capacity=100)
    idx.add("a", [1, 2, 3])
    idx.add("b", [2])
    mark = idx.seq
    idx.add("a", [9], filler=4)  # a placeholder (4 blocks) and 9, after ``mark``
    idx.add("a", [1])  # 1 touched again: it is recent now
    size_before = idx._size["a"]
    assert idx.forget_through("a", mark) == 2  # 2 and 3; 1 was touched since
    assert idx.match([1, 2], ["a", "b"]) == [1, 0]
    assert idx.match([2], ["a", "b"]) == [0, 1]  # b's copy of 2 is b's own
    assert idx.match([3], ["a"]) == [0] and idx.stats().unique_hashes == 3  # 1, 2 (b), 9
    assert idx._size["a"] == size_before - 2
    assert idx.forget_through("a", idx.seq) == 3 and idx.total == 1  # placeholder, 9, 1: only b's 2 left
    assert idx._size["a"] == 0 and not idx._weight
    assert idx.forget_through("nobody", 10) == 0


def test_forget_through_keeps_the_blocks_of_picks_still_running() -> None:
    idx = PrefixIndex(default_capacity=100)
    idx.add("a", [1, 2])  # touches 1, 2
    idx.add("a", [3, 4])  # 3, 4: a pick still running (blocks in use)
    idx.add("a", [5])  # 5
    assert idx.forget_through("a", idx.seq, keep=([3], [4])) == 3
    assert idx.match([3, 4], ["a"]) == [2] and idx.match([1], ["a"]) == [0] and idx.match([5], ["a"]) == [0]
    idx.add("a", [6], filler=200)  # the kept entries are still the oldest: they age out first
    assert idx.match([3], ["a"]) == [0] and idx.match([6], ["a"]) == [1]


def test_usage_reports_whether_cached_tokens_were_there() -> None:
    assert usage_from(
        {"usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 0}}}
    ) == Usage(9, 0, 0, cached_reported=True)
    missing = usage_from({"usage": {"prompt_tokens": 9, "completion_tokens": 1}})
    assert missing is not None and not missing.cached_reported  # 0 then means unknown, not "none cached"


def _director(feedback: bool) -> tuple[Director, Endpoint, Endpoint]:
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "prefix-cache-scorer":
            spec.parameters = {**(spec.parameters or {}), "cachedTokensFeedback": feedback}
    a, b = ep("a:1"), ep("b:1")
    return build_director(cfg, EndpointStore([a, b]), clock=lambda: 0.0, seed=0), a, b


def _serve(d: Director, rid: str, prompt: str, expect: Endpoint, cached: int | None) -> None:
    r = InferenceRequest(rid, "m", prompt_text=prompt, max_tokens=16)
    got = d.pick(r).primary
    assert got is expect
    d.on_dispatched(r, got)
    d.on_first_token(r, got)
    usage = Usage(len(prompt) // 4, 16, cached or 0, cached_reported=cached is not None)
    d.on_finished(r, got, usage, True)


def _next_pick_for_q(feedback: bool, cached: int | None) -> str:
    d, a, b = _director(feedback)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000  # b busy: everything goes to a
    _serve(d, "q1", Q + "first question", a, None)
    _serve(d, "p1", P + "first question", a, None)
    # p2 finds P where the index says it is; the engine reports what it really had of it.
    _serve(d, "p2", P + "second question", a, cached)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 0, 0
    a.inflight.requests, a.inflight.pending_decode_tokens = 1, 64  # a slightly busier than b now
    return d.pick(
        InferenceRequest("q2", "m", prompt_text=Q + "third question", max_tokens=16)
    ).primary.address


def test_an_engine_that_evicted_a_claimed_prefix_changes_the_next_pick() -> None:
    # The index believes a holds Q (routed there before P): a Q request goes back to a.
    assert _next_pick_for_q(feedback=True, cached=None) == "a:1"  # no cached count reported
    assert _next_pick_for_q(feedback=True, cached=23 * 16) == "a:1"  # the engine had all of P
    assert _next_pick_for_q(feedback=False, cached=0) == "a:1"  # feedback off: the index is not told
    # The engine had none of P, which a's index recorded after Q: under LRU, Q is gone from a too. The
    # index forgets it, and the next Q request goes where it costs least (b is idle).
    assert _next_pick_for_q(feedback=True, cached=0) == "b:1"


def test_a_prefix_still_being_computed_is_not_taken_for_an_eviction() -> None:
    d, a, b = _director(True)
    scorer = d.handle.plugin("prefix-cache-scorer")
    assert isinstance(scorer, PrefixCacheScorer)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    _serve(d, "q1", Q + "first question", a, None)
    # p1 is still prefilling when p2 arrives: p2 finds no cached P because p1 has not computed it yet.
    p1 = InferenceRequest("p1", "m", prompt_text=P + "first question", max_tokens=16)
    d.on_dispatched(p1, d.pick(p1).primary)
    p2 = InferenceRequest("p2", "m", prompt_text=P + "second question", max_tokens=16)
    assert d.pick(p2).primary is a
    d.on_dispatched(p2, a)
    d.on_first_token(p1, a)
    d.on_first_token(p2, a)
    d.on_finished(p2, a, Usage(len(P) // 4, 16, 0, cached_reported=True), True)
    assert scorer.forgotten == 0  # p2's claim was p1's blocks, recorded after p1's pick, still in flight
