"""Session 25's calls taken off the pick and the accounting (``prefix_match`` inlined, ``uncached_fraction``
not asked for a prompt with no hashed block, the cost scorer's ``_forget`` not called with nothing waiting,
``Director._batch`` inlined in ``_started``): the state each leaves is what the calls left."""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.plugins.prefix_cache import prefix_match
from kvgate.scheduling.types import InferenceRequest, Usage

from .helpers import ep

SHORT = "Say hello to the benchmark"  # (shorter than a block: no hash)
LONG = "the shared context of many requests, " * 40  # (several blocks)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _director(clock: _Clock) -> tuple[Any, Any, Any]:
    a, b = ep("a:1", clock.now), ep("b:1", clock.now)
    d = build_director(policy_config("kvgate"), EndpointStore([a, b]), clock=clock, seed=0)
    return d, a, b


def _cost(d: Any) -> KVGateCostScorer:
    found = [p for p in d.handle.plugins.values() if isinstance(p, KVGateCostScorer)]
    assert len(found) == 1
    return found[0]


def _spy(cost: KVGateCostScorer) -> list[Any]:
    """``cost.on_picked`` records each pick's match and endpoint before it runs (an instance attribute:
    ``del cost.on_picked`` puts the method back)."""
    seen: list[Any] = []
    real = cost.on_picked

    def spy(cycle: Any, endpoint: Any) -> None:
        seen.append((prefix_match(cycle), endpoint.address))
        real(cycle, endpoint)

    cost.on_picked = spy  # type: ignore[method-assign]
    return seen


def test_mean_uncached_moves_as_the_match_says() -> None:
    """``on_picked``'s uncached tokens: the prompt for a prompt with no block (``uncached_fraction`` 1.0, not
    asked), the match's share otherwise; the EWMA moves by each as ``p * uncached_fraction`` would."""
    clock = _Clock()
    d, a, _ = _director(clock)
    cost = _cost(d)
    for i, text in enumerate([SHORT, LONG, LONG, SHORT, LONG + "tail"]):
        req = InferenceRequest(f"r{i}", "m", prompt_text=text, prompt_tokens=len(text) // 4, max_tokens=8)
        before = cost.mean_uncached
        seen = _spy(cost)
        try:
            picked = d.pick(req).endpoints[0]
        finally:
            del cost.on_picked
        ((m, address),) = seen
        assert address == picked.address and m is not None
        if text == SHORT:
            assert not m.hashes
        want = before + 0.05 * (req.prompt_tokens * m.uncached_fraction(address) - before)
        assert cost.mean_uncached == want
        d.on_dispatched(req, picked)
        if m.hashes:
            assert req.request_id in cost._waiting  # (waits on its prefix until its first token)
        d.on_whole(req, picked, Usage(req.prompt_tokens, 8), True)
        assert req.request_id not in cost._waiting and not cost._waiting_at.get(picked.address)
    assert a.inflight.requests == 0 and not d._tracks


def test_finish_with_nothing_waiting_and_with_others_waiting() -> None:
    """A finish forgets its own waiting entry only; with nothing waiting it leaves the tables empty."""
    clock = _Clock()
    d, _, _ = _director(clock)
    cost = _cost(d)
    one = InferenceRequest("one", "m", prompt_text=LONG, prompt_tokens=len(LONG) // 4, max_tokens=8)
    two = InferenceRequest("two", "m", prompt_text=SHORT, prompt_tokens=6, max_tokens=8)
    e1 = d.pick(one).endpoints[0]
    d.on_dispatched(one, e1)
    e2 = d.pick(two).endpoints[0]
    d.on_dispatched(two, e2)
    assert list(cost._waiting) == ["one"]
    d.on_whole(two, e2, Usage(6, 8), True)
    assert list(cost._waiting) == ["one"]
    d.on_whole(one, e1, Usage(one.prompt_tokens, 8), True)
    assert not cost._waiting and not cost._waiting_at and not cost._tails


def test_batch_at_first_token_is_the_batch_it_joins() -> None:
    """``_started``'s batch: this picker's decoding count, or the fresh scraped running count when larger;
    a stale page is not read."""
    clock = _Clock()
    d, a, _ = _director(clock)
    for fresh, running, want in ((True, 5, 5.0 + 1), (True, 0, 1.0 + 1), (False, 5, 1.0 + 1)):
        other = InferenceRequest("other", "m", prompt_text=SHORT, prompt_tokens=6, max_tokens=8)
        d.on_dispatched(other, a)
        d.on_first_token(other, a, learn=False)  # (one sequence decoding there, of this picker's own)
        a.metrics.running_requests = running
        a.metrics.updated_at = clock.now if fresh else clock.now - 1000.0
        req = InferenceRequest("r", "m", prompt_text=SHORT, prompt_tokens=6, max_tokens=8)
        d.on_dispatched(req, a)
        d.on_first_token(req, a, learn=False)
        assert d._tracks[("r", a.address)].batch_at_first == want
        d.on_finished(req, a, None, True)
        d.on_finished(other, a, None, True)
