"""The per-endpoint speed estimator: converges to the true ratio, shrugs off outliers, stays bounded."""

from __future__ import annotations

import math
import random

import pytest

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.speed import BATCH_KNEE, SpeedEstimator


def _step(slot_cost: float, batch: float) -> float:
    """A decode-bound engine's step time: ``slot_cost`` per sequence slot, weights as BATCH_KNEE slots."""
    return slot_cost * (batch + BATCH_KNEE)


def test_converges_to_the_true_speed_ratio_whatever_each_replica_is_loaded_with() -> None:
    rng = random.Random(1)
    est = SpeedEstimator()
    fast, slow = Endpoint("fast:1"), Endpoint("slow:1")
    # The slow replica is 2.4x slower per sequence slot, but the fast one carries batches ~4x larger:
    # its raw time per token is *higher* (the trap a per-sequence pace falls into).
    raw_fast, raw_slow = [], []
    for _ in range(400):
        bf, bs = rng.uniform(700, 1000), rng.uniform(150, 256)
        tf = _step(1e-4, bf) * rng.lognormvariate(0, 0.2)  # 20% noise per response
        ts = _step(2.4e-4, bs) * rng.lognormvariate(0, 0.2)
        raw_fast.append(tf)
        raw_slow.append(ts)
        est.observe(fast, tf * 119, 120, bf)
        est.observe(slow, ts * 119, 120, bs)
    assert sum(raw_fast) > sum(raw_slow)  # per sequence, the fast replica looks slower
    ratio = slow.inflight.pace / fast.inflight.pace
    assert 2.4 * 0.9 < ratio < 2.4 * 1.1, ratio


def test_nothing_is_published_before_min_samples_then_the_median_start_ignores_an_outlier() -> None:
    est = SpeedEstimator(min_samples=5)
    e = Endpoint("a:1")
    samples = [0.01, 0.011, 5.0, 0.0095, 0.0105]  # one response stalled 500x
    for i, x in enumerate(samples):
        assert est.cost("a:1") is None and e.inflight.pace == 0.0  # prior: no speed known yet
        est.observe(e, x * 99, 100, 1)
        assert (e.inflight.pace > 0.0) == (i == len(samples) - 1)
    assert e.inflight.pace == pytest.approx(0.0105 / (1 + BATCH_KNEE))  # the median, not the mean (1.0)


def test_a_burst_of_outliers_moves_the_estimate_only_by_the_clip() -> None:
    est = SpeedEstimator(min_samples=3, alpha=0.05, clip=3.0)
    e = Endpoint("a:1")
    for _ in range(50):
        est.observe(e, 0.01 * 99, 100, 1)
    before = e.inflight.pace
    for _ in range(5):
        est.observe(e, 100.0 * 99, 100, 1)  # 10,000x slower: stalls, not speed
    # Each moves log(pace) by at most alpha x clip x max(spread, min_spread) (spread is ~0 here).
    assert math.log(e.inflight.pace / before) <= 5 * 0.05 * 3.0 * 0.05 * 1.5
    for _ in range(100):
        est.observe(e, 0.01 * 99, 100, 1)
    assert e.inflight.pace == pytest.approx(before, rel=0.01)


def test_tracks_a_replica_that_really_slows_down() -> None:
    est = SpeedEstimator(min_samples=3)
    e = Endpoint("a:1")
    for _ in range(20):
        est.observe(e, 0.01 * 99, 100, 10)
    fast = e.inflight.pace
    for _ in range(300):  # the replica is now 3x slower for good (throttled, a neighbour, a new GPU)
        est.observe(e, 0.03 * 99, 100, 10)
    assert e.inflight.pace == pytest.approx(3 * fast, rel=0.05)


def test_short_and_unstreamed_responses_are_ignored() -> None:
    est = SpeedEstimator(min_samples=1)
    e = Endpoint("a:1")
    assert not est.observe(e, 1.0, 4, 1)  # too short to say anything
    assert not est.observe(e, 0.0001, 500, 1)  # non-streamed: first and last token reported together
    assert e.inflight.pace == 0.0 and len(est) == 0


def test_memory_is_bounded_by_max_endpoints() -> None:
    est = SpeedEstimator(min_samples=1, max_endpoints=16)
    for i in range(1000):
        est.observe(Endpoint(f"10.0.{i // 256}.{i % 256}:8000"), 1.0, 100, 1)
    assert len(est) == 16
    assert est.cost("10.0.3.231:8000") is not None  # the most recent are kept
    assert est.cost("10.0.0.0:8000") is None
    est.forget("10.0.3.231:8000")
    assert len(est) == 15


def test_rejects_a_bad_alpha() -> None:
    with pytest.raises(ValueError):
        SpeedEstimator(alpha=0.0)
