"""The kvgate policy's model error (``ClusterState.model_bias``): what answered TTFTs teach, and what they
must not (the reviews' repro cases: a faded error snapping back, one outlier, the start-up prior counted
twice, a concurrent order dropping an answer's evidence)."""

from __future__ import annotations

import random

import pytest

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy
from kvgate.multicluster.state import BIAS_RANGE, ClusterState


def _agg(name: str, snap: float, head: float = 2.0) -> PoolAggregate:
    return PoolAggregate(
        name, snap, 4, 4, average_kv_cache_utilization=0.3, capacity=4.0, headroom=head, request_slots=32.0
    )


def _cluster(name: str = "b", *, answers: int = 20, rtt: float = 0.0) -> ClusterState:
    st = ClusterState(ClusterSpec(name, gateway=f"{name}:80", rtt_ms=rtt))
    st.set_aggregate(_agg(name, 1.0), 0.0)
    for _ in range(answers):  # its floor: 0.1 s
        st.observe_ttft(0.1, 0.0)
    return st


def _send(p: KvgatePolicy, st: ClusterState, now: float) -> tuple[int, float]:
    """Order for one request and dispatch it there: its token and the model's prediction."""
    req = ClusterRequest()
    p.order([st], req, now)
    model = p.model_ttft(st)
    return st.dispatched(now, req.model_load.get(st.name)), model


def test_an_answer_after_the_error_faded_does_not_bring_back_its_peak() -> None:
    """One request stalled 60 s (a healed partition); 30 s later the error has faded and the cluster is
    tried again; its answer, exactly as predicted, must leave the bias near the faded value, not update
    the stored peak (it was 352x the model's word before the fix)."""
    p = KvgatePolicy(rng=random.Random(0))
    b = _cluster()
    tok, _ = _send(p, b, 0.0)
    b.observe_ttft(60.0, 60.0, tok)
    peak = b.model_bias(60.0)
    assert peak > 1.0
    faded = b.model_bias(90.0)
    assert faded < 1.0 + (peak - 1.0) * 0.01
    b.set_aggregate(_agg("b", 2.0), 90.0)
    tok, model = _send(p, b, 90.0)
    b.observe_ttft(model, 90.0 + model, tok)
    assert b.model_bias(90.0 + model) <= faded + 1e-9


def test_one_huge_outlier_moves_the_bias_a_bounded_step() -> None:
    """The first answer with a prediction does not set the bias outright, nor does a 1000x outlier
    count as 1000: its error is clamped and averaged in from no error (1.0)."""
    p = KvgatePolicy(rng=random.Random(0))
    b = _cluster()
    tok, model = _send(p, b, 1.0)
    b.observe_ttft(1000 * model, 1.0, tok)
    assert 1.0 < b.model_bias(1.0) <= BIAS_RANGE[1] ** 0.1 + 1e-9  # ~1.23, not 1000
    # and many on-model answers bring it back to 1
    for _ in range(60):
        tok, model = _send(p, b, 1.0)
        b.observe_ttft(model, 1.0, tok)
    assert b.model_bias(1.0) < 1.01


def test_a_start_up_prior_wrong_about_speed_is_not_counted_twice() -> None:
    """At start-up the model's idle TTFT is a prior over GPU labels (50 ms / speed + RTT), here 7x too
    low. Answers set the floor to the real speed; they must not also scale the corrected model by the
    prior's error (before the fix: costed at 3.9 s, 7x, on every gateway start)."""
    p = KvgatePolicy(rng=random.Random(0))
    c = ClusterState(ClusterSpec("c", gateway="c:80", rtt_ms=5))
    c.set_aggregate(
        PoolAggregate(
            "c", 1.0, 4, 4, average_kv_cache_utilization=0.1, capacity=4.0, headroom=3.6, request_slots=32.0
        ),
        0.0,
    )
    prior = p.model_ttft(c)
    toks = [_send(p, c, 0.0)[0] for _ in range(8)]  # 8 streamed requests before any answer
    for k in toks:  # the cluster's real idle TTFT: 0.5 s
        c.observe_ttft(0.5, 0.5, k)
        c.finished(k, 1.0)
    assert prior < 0.1
    c.set_aggregate(
        PoolAggregate(
            "c", 2.0, 4, 4, average_kv_cache_utilization=0.1, capacity=4.0, headroom=3.6, request_slots=32.0
        ),
        1.0,
    )
    assert c.ttft_floor_s == pytest.approx(0.5)
    assert c.model_bias(1.0) == 1.0
    assert p.predicted_ttft(c, 1.0) == pytest.approx(p.model_ttft(c)) and p.model_ttft(c) < 0.6


def test_a_concurrent_order_does_not_drop_an_answers_evidence() -> None:
    """The router awaits the EPP between ordering the clusters and dispatching (Endpoint mode): another
    request's order in between, one that cannot use the cluster (no model there), must not erase this
    request's prediction; the slow answer still corrects the model."""
    p = KvgatePolicy(rng=random.Random(0))
    b = _cluster()
    first = ClusterRequest()
    p.order([b], first, 1.0)
    model = p.model_ttft(b)
    b.healthy = False  # the EPP reports NOT_SERVING just then: the next order has no model there
    p.order([b], ClusterRequest(), 1.0)
    b.healthy = None
    tok = b.dispatched(1.0, first.model_load.get("b"))
    b.observe_ttft(5 * model, 1.0 + 5 * model, tok)
    assert b.model_bias(1.0 + 5 * model) > 1.1


def test_answers_without_a_load_or_before_a_floor_are_no_evidence() -> None:
    c = ClusterState(ClusterSpec("c", gateway="c:80"))
    c.observe_ttft(9.0, 1.0, c.dispatched(0.5, 3.0))  # the first answer sets the floor, no error learnt
    assert c.ttft_floor_s == 9.0 and c.model_bias(1.0) == 1.0
    c.observe_ttft(90.0, 2.0, c.dispatched(1.5))  # dispatched without a model: no evidence either
    assert c.model_bias(2.0) == 1.0
