"""Review rev-b34 on ``pendingHolders`` (fam34), the scorer's part: a resend without a new pick (F4), the
behaviours no test pinned (F5: where the blocks are recorded, a retried pick, the memory bounds, the
pending depth), the pending map (F3) and a block-size change (F6). Director calls in the doors' order."""

from __future__ import annotations

import pytest

from kvgate.scheduling.framework import CycleState
from kvgate.scheduling.plugins import prefix_cache
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, _PendingPicks, prefix_match
from kvgate.scheduling.types import InferenceRequest, Usage

from .test_pending_holders_fam34 import Q, _director, _dispatch, _match, _req


def _held_at(scorer: PrefixCacheScorer, d: object, address: str) -> int:
    cycle = CycleState(_req("probe", "probe"), 0.0)
    scorer.prepare(cycle, d.store.all())  # type: ignore[attr-defined]
    m = prefix_match(cycle)
    assert m is not None and len(m.hashes) == 23
    return scorer.index.match(m.hashes, [address])[0]


def test_F4_a_stale_connection_resend_records_the_prefill_it_ran() -> None:
    # ``kvgate serve``'s StaleConnection: finished (not ok) then dispatched again to the same endpoint,
    # with no new pick; the resend's first token is the prefill that ran.
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    q1 = _req("q1", "first question")
    assert _dispatch(d, q1) is a
    d.on_finished(q1, a, None, False)
    assert _match(scorer, d, "second question")[0].get("a:1", 0) == 0  # ended: no holder meanwhile
    d.on_dispatched(q1, a)
    d.on_first_token(q1, a)
    d.on_finished(q1, a, Usage(370, 16, 0), True)
    assert _held_at(scorer, d, "a:1") == 23


def test_F5_the_blocks_go_where_the_first_token_came_not_where_it_was_picked() -> None:
    # Envoy's fallback (``kvgate epp``'s ``_move_to``): the pick's endpoint is finished unserved, the
    # other serves it.
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    q1 = _req("q1", "first question")
    assert _dispatch(d, q1) is a
    d.on_finished(q1, a, None, False)
    d.on_dispatched(q1, b)
    d.on_first_token(q1, b)
    assert (_held_at(scorer, d, "b:1"), _held_at(scorer, d, "a:1")) == (23, 0)
    assert not scorer._pending and not scorer._pend.parked


def test_F5_a_retried_pick_replaces_the_earlier_one() -> None:
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    q1 = _req("q1", "first question")
    assert _dispatch(d, q1) is a
    a.inflight.requests, a.inflight.pending_prefill_tokens = 9, 90_000
    b.inflight.requests, b.inflight.pending_prefill_tokens = 0, 0
    assert d.pick(q1).primary is b  # picked again (a retry) before a's pick finished
    matched, _ = _match(scorer, d, "second question")
    assert matched.get("a:1", 0) == 0 and matched.get("b:1", 0) == 23
    assert list(scorer._pending) == ["q1"] and set(scorer._pending_at) == {"b:1"}


def _pick(scorer: PrefixCacheScorer, d: object, rid: str, prompt: str, address: str) -> None:
    cycle = CycleState(InferenceRequest(rid, "m", prompt_text=prompt), 0.0)
    eps = d.store.all()  # type: ignore[attr-defined]
    scorer.prepare(cycle, eps)
    scorer.on_picked(cycle, next(e for e in eps if e.address == address))


def _keys(pend: _PendingPicks) -> int:
    return sum(len(c) for c in pend.held.values())


def test_F5_at_most_8192_pending_picks_the_oldest_forgotten() -> None:
    d, scorer, _, _ = _director(True)
    assert prefix_cache.MAX_CLAIMS == 8192
    for i in range(8193):
        _pick(scorer, d, f"r{i}", f"{i:06d} " * 20, "a:1")  # 140 characters: 2 blocks each
    assert len(scorer._pending) == 8192 and "r0" not in scorer._pending and "r8192" in scorer._pending
    assert scorer._pend.keys == _keys(scorer._pend) == 2 * 8192


def test_F3_the_pending_map_is_bounded_in_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    d, scorer, a, _ = _director(True)
    monkeypatch.setattr(prefix_cache, "MAX_PENDING_KEYS", 50)
    for i in range(3):  # 23 blocks each, each its own head
        _pick(scorer, d, f"r{i}", f"{i}" + Q, "a:1")
    assert list(scorer._pending) == ["r1", "r2"]  # the oldest forgotten to stay within 50 entries
    assert scorer._pend.keys == _keys(scorer._pend) == 46
    scorer.on_first_token(_req("r1", ""), a, 0.0)
    assert list(scorer._pending) == ["r2"] and scorer._pend.keys == _keys(scorer._pend) == 23


def test_F5_F3_every_pending_pick_counts_not_only_the_latest_64() -> None:
    # The deepest pending pick is the oldest of 100 there: the map answers for all of them.
    d, scorer, _, _ = _director(True)
    _pick(scorer, d, "deep", Q + "second question", "a:1")
    for i in range(99):
        _pick(scorer, d, f"r{i}", Q[: 64 * 5] + f"other {i:04d} " * 30, "a:1")
    matched, held = _match(scorer, d, "second question")
    assert held == 0 and matched == {"a:1": 23}


def test_F3_the_pending_depth_is_the_deepest_shared_block() -> None:
    pend = _PendingPicks()
    pend.hold("x", prefix_cache._Pending("a", prefix_cache.array("Q", [1, 2, 3, 4, 5]), None, 0))
    pend.hold("y", prefix_cache._Pending("a", prefix_cache.array("Q", [1, 2, 7]), None, 0))
    for hashes, known, want in (
        ([1, 2, 3, 4, 5, 6], 0, 5),
        ([1, 2, 3, 9], 0, 3),
        ([1, 2, 7, 8], 0, 3),
        ([1, 8], 0, 1),
        ([9], 0, 0),
        ([1, 2, 3, 4, 5, 6], 6, 6),  # the index knew more: kept
        ([1, 2, 8, 9, 10], 4, 4),  # the index knew more than what is pending: kept
        ([1, 2, 3, 4, 9], 2, 4),
    ):
        assert pend.depth(hashes, "a", known) == want, (hashes, known)
    assert pend.depth([1, 2], "b", 0) == 0
    pend.drop("x")
    assert pend.depth([1, 2, 3, 4, 5, 6], "a", 0) == 2 and pend.keys == 3


def test_F6_a_block_size_change_clears_the_pending_picks() -> None:
    d, scorer, a, b = _director(True)
    b.inflight.requests, b.inflight.pending_prefill_tokens = 8, 50_000
    q1 = _req("q1", "first question")
    assert _dispatch(d, q1) is a
    assert scorer._pending
    a.metrics.block_size = b.metrics.block_size = 32  # the first scrape says what a block is
    cycle = CycleState(_req("probe", "probe"), 0.0)
    scorer.prepare(cycle, d.store.all())
    assert not scorer._pending and not scorer._pending_at  # keyed by 16-token blocks: never to match
    d.on_first_token(q1, a)
    assert scorer.index.total == 0
