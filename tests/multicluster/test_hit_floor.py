"""The TTFT floor is a prefix hit's (issue #14, session 8): the miss cost is added to it, and a cold start's
first answers are all misses. Live, `west` (few answers) kept a floor of 1.0-1.3 s (its first answers,
misses) for 15 s after a fresh gateway started, against 0.3-0.4 s for a hit there: it looked 3x slower
than it was, its tenants spilled to `east` and its home weight moved a class as the floor walked down."""

from __future__ import annotations

import pytest

from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.state import ClusterState, DispatchNote


def _answer(st: ClusterState, ttft: float, cached: float | None, key: bytes, t: float) -> None:
    tok = st.dispatched(t, note=DispatchNote(load=1.0, cached=0.0, key=key, queue=1.0), usage=True)
    st.observe_ttft(ttft, t + ttft, tok)
    st.finished(tok, t + ttft + 1.0, cached=cached)


def test_the_floor_is_the_hits_once_one_is_reported() -> None:
    st = ClusterState(ClusterSpec("west", gateway="west:80"))
    for i in range(4):  # a cold start: each tenant's first request misses
        _answer(st, 1.25 + 0.05 * i, 0.0, f"tenant{i}".encode(), float(i))
    assert st.ttft_floor_s == pytest.approx(1.25, rel=0.1)
    _answer(st, 0.35, 0.9, b"tenant0", 5.0)  # the first hit there
    assert st.ttft_floor_s == pytest.approx(0.35)
    # More misses do not lift it: they are not a hit's speed.
    for i in range(4, 10):
        _answer(st, 1.3, 0.0, f"tenant{i}".encode(), 6.0 + i)
    assert st.ttft_floor_s == pytest.approx(0.35)
    # Hits move it as the 10th percentile of theirs.
    for i in range(20):
        _answer(st, 0.3, 0.9, b"tenant1", 20.0 + i)
    assert st.ttft_floor_s == pytest.approx(0.3, rel=0.05)


def test_without_reported_tokens_every_answer_is_the_floors_evidence() -> None:
    """A client that does not ask for usage: no hit is known, so the floor is every answer's, as before."""
    st = ClusterState(ClusterSpec("a", gateway="a:80"))
    for ttft in (1.2, 0.3, 1.3):
        tok = st.dispatched(0.0, note=DispatchNote(load=1.0, cached=None, key=b"k", queue=1.0))
        st.observe_ttft(ttft, 1.0, tok)
        st.finished(tok, 2.0)
    assert st.ttft_floor_s is not None and 0.3 < st.ttft_floor_s < 1.2
