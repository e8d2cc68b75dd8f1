"""Review s8-mc (multi-cluster policy, session 8; each fails first on d6756e7): a first hit slower than the
floor does not raise it (B1, both the prediction and the reported-usage path), a returning cluster learns
its hits' floor again (R2)."""

from __future__ import annotations

import pytest

from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.state import ClusterState, DispatchNote


def _answer(st: ClusterState, ttft: float, cached: float | None, key: bytes, t: float) -> None:
    tok = st.dispatched(t, note=DispatchNote(load=1.0, cached=0.0, key=key, queue=1.0), usage=True)
    st.observe_ttft(ttft, t + ttft, tok)
    st.finished(tok, t + ttft + 1.0, cached=cached)


# --- B1 -------------------------------------------------------------------------------------------------


def test_a_queued_first_hit_does_not_raise_the_floor_above_every_answers_floor() -> None:
    """Live, seed 8 (multicluster-live-48ed24f-s8.json, steady, `learnt`): `west`'s floor was 0.73 s; its
    first reported hit, queued behind the warm-up's misses, answered in ~2.45 s and the floor became
    2.45 s (west looked 3.4x slower than a second before). The hits' tracker starts at the floor then."""
    st = ClusterState(ClusterSpec("west", gateway="west:80"))
    for i, ttft in enumerate((1.33, 1.31, 1.2, 0.9, 0.75, 0.7)):  # cold misses, then faster ones
        _answer(st, ttft, 0.0, f"tenant{i}".encode(), float(i))
    before = st.ttft_floor_s
    assert before is not None and before < 1.0
    _answer(st, 2.45, 0.9, b"tenant0", 10.0)  # the first reported hit, queued behind the misses
    assert st.ttft_floor_s is not None
    assert st.ttft_floor_s <= before * 1.05, (before, st.ttft_floor_s)
    # A faster hit after it still takes the floor down (it is the hits' tracker from there).
    for i in range(20):
        _answer(st, 0.3, 0.9, b"tenant1", 20.0 + i)
    assert st.ttft_floor_s == pytest.approx(0.3, rel=0.05)


def test_a_slow_first_predicted_hit_does_not_raise_the_floor_either() -> None:
    """The same through the prediction path (no reported usage: the Bloom summary's sure hit, classified
    at the first byte in ``observe_ttft``), the router's path for a client that did not ask for usage."""
    st = ClusterState(ClusterSpec("west", gateway="west:80"))
    for i, ttft in enumerate((1.3, 0.8, 0.7)):
        tok = st.dispatched(
            float(i), note=DispatchNote(load=1.0, cached=0.0, key=f"k{i}".encode(), queue=1.0)
        )
        st.observe_ttft(ttft, float(i) + ttft, tok)
        st.finished(tok, float(i) + 2.0)
    before = st.ttft_floor_s
    assert before is not None
    tok = st.dispatched(5.0, note=DispatchNote(load=1.0, cached=1.0, key=b"k0", queue=1.0))  # a sure hit
    st.observe_ttft(2.5, 7.5, tok)
    assert st.ttft_floor_s is not None and st.ttft_floor_s <= before * 1.05, (before, st.ttft_floor_s)


# --- R2 -------------------------------------------------------------------------------------------------


def test_a_returning_cluster_learns_its_hits_floor_again() -> None:
    """After one hit only hits moved the floor, and nothing reset it: a cluster that came back on a 3x
    slower GPU with prefix caching off (every answer reports 0 cached tokens) kept the old hit floor for
    good. On return (``start_ramp``) the floor is every answer's again until a hit."""
    st = ClusterState(ClusterSpec("west", gateway="west:80"))
    for i in range(20):
        _answer(st, 0.3, 0.9, b"tenant", float(i))
    assert st.ttft_floor_s == pytest.approx(0.3, rel=0.05)
    st.start_ramp(30.0)  # it went away and came back (replaced)
    st.ramp_window = None
    for i in range(500):  # every answer is a miss at 3 s
        _answer(st, 3.0 + 0.01 * (i % 7), 0.0, f"t{i}".encode(), 40.0 + i)
    assert st.ttft_floor_s is not None and st.ttft_floor_s > 0.6, st.ttft_floor_s
    _answer(st, 0.9, 0.9, b"t0", 600.0)  # its first hit since (faster than every answer's floor)
    assert st.ttft_floor_s == pytest.approx(0.9)
