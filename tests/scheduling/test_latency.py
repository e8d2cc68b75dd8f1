"""The online latency model: converges on noisy linear data, uncertainty shrinks, state stays bounded."""

from __future__ import annotations

import random

import pytest

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics, InFlight
from kvgate.scheduling.latency import DIM, LatencyPredictor, RLSModel, features

TRUE = [0.05, 0.03, 0.01, 0.2, 0.08, 0.005, 0.02]  # seconds per unit of each feature


def _x(rng: random.Random) -> list[float]:
    return [
        1.0,
        rng.randint(0, 10),
        rng.randint(0, 30),
        rng.random(),
        rng.random() * 4,
        rng.random() * 2,
        rng.random() * 8,
    ]


def test_rls_converges_on_noisy_linear_data() -> None:
    rng = random.Random(1)
    m = RLSModel(DIM, lam=0.999)
    for _ in range(3000):
        x = _x(rng)
        m.update(x, sum(a * b for a, b in zip(TRUE, x, strict=True)) + rng.gauss(0.0, 0.01))
    for got, want in zip(m.theta, TRUE, strict=True):
        assert got == pytest.approx(want, abs=0.01)
    # The noise estimate finds the true noise (0.01 s) within a generous factor.
    assert 0.005 < m.noise_var**0.5 < 0.02
    x = _x(rng)
    mean, var = m.predict(x)
    assert mean == pytest.approx(sum(a * b for a, b in zip(TRUE, x, strict=True)), abs=0.05)
    assert var > 0.0


def test_uncertainty_shrinks_with_data() -> None:
    rng = random.Random(2)
    m = RLSModel(DIM, lam=0.995)
    probe = [1.0, 3.0, 10.0, 0.5, 1.0, 0.5, 2.0]
    seen = [m.param_var(probe)]
    for n in (10, 100, 1000):
        while m.n < n:
            x = _x(rng)
            m.update(x, sum(a * b for a, b in zip(TRUE, x, strict=True)) + rng.gauss(0.0, 0.01))
        seen.append(m.param_var(probe))
    assert seen == sorted(seen, reverse=True) and seen[-1] < seen[0] / 100


def test_forgetting_tracks_a_change_and_p_stays_bounded() -> None:
    rng = random.Random(3)
    m = RLSModel(DIM, lam=0.98)
    for _ in range(500):
        x = _x(rng)
        m.update(x, 0.1 * x[1])
    for _ in range(500):
        x = _x(rng)
        m.update(x, 0.3 * x[1])  # the replica got slower per queued request
    assert m.theta[1] == pytest.approx(0.3, abs=0.02)
    # Unexciting data (the same point over and over) must not wind the covariance up without bound.
    for _ in range(5000):
        m.update([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.0)
    assert sum(m.p[i][i] for i in range(DIM)) <= m.p_max / m.lam + 1e-6


def test_bad_forgetting_is_rejected() -> None:
    with pytest.raises(ValueError, match="forgetting"):
        RLSModel(DIM, lam=0.0)
    with pytest.raises(ValueError, match="forgetting"):
        LatencyPredictor(forgetting=1.5)


def test_predictor_learns_per_endpoint_from_the_life_cycle() -> None:
    p = LatencyPredictor(forgetting=0.995)
    rng = random.Random(4)
    now = 0.0
    for i in range(400):
        for addr, speed in (("fast:1", 1.0), ("slow:1", 3.0)):
            x = _x(rng)
            ttft = speed * sum(a * b for a, b in zip(TRUE, x, strict=True))
            p.picked(f"r{i}", addr, x, now)
            p.first_token(f"r{i}", addr, now + ttft)
            p.first_token(f"r{i}", addr, now + 99.0)  # a second first token is ignored
            p.finished(f"r{i}", addr, 11, True, now + ttft + 10 * speed * 0.02)
        now += 1.0
    x = [1.0, 2.0, 5.0, 0.3, 1.0, 0.0, 1.0]
    fast, slow = p.predict("fast:1", x), p.predict("slow:1", x)
    want = sum(a * b for a, b in zip(TRUE, x, strict=True))
    assert fast.ttft == pytest.approx(want, rel=0.05)
    assert slow.ttft == pytest.approx(3 * want, rel=0.05)
    assert fast.tpot == pytest.approx(0.02, rel=0.05) and slow.tpot == pytest.approx(0.06, rel=0.05)
    assert fast.samples == 400 and p.pending() == 0
    unknown = p.predict("new:1", x)
    assert unknown.samples == 0 and unknown.ttft_std > fast.ttft_std


def test_predictor_state_is_bounded() -> None:
    p = LatencyPredictor(max_endpoints=8, max_pending=16)
    x = [1.0] + [0.0] * (DIM - 1)
    for i in range(100):
        p.picked(f"r{i}", f"10.0.0.{i}:8000", x, float(i))
        p.first_token(f"r{i}", f"10.0.0.{i}:8000", float(i) + 0.1)
        p.picked(f"q{i}", "never-answers:1", x, float(i))  # leaked picks
    assert len(p) == 8 and p.pending() <= 16
    p.finished("gone", "nowhere:1", 10, True, 1.0)  # unknown request: ignored
    p.finished("r99", "10.0.0.99:8000", 10, False, 200.0)  # failed: no TPOT learned
    assert p.predict("10.0.0.99:8000", x).tpot == 0.0


def test_features_use_fresh_scraped_signals_only() -> None:
    ep = Endpoint(
        "a:1",
        metrics=EndpointMetrics(
            waiting_queue_size=4, running_requests=9, kv_cache_usage=0.5, updated_at=10.0
        ),
        inflight=InFlight(requests=3, decoding=1, pending_prefill_tokens=2000),
    )
    assert features(ep, 1000, 0.25, now=10.5, staleness=2.0) == [1.0, 4.0, 9.0, 0.5, 0.75, 0.25, 2.0]
    assert features(ep, 1000, 0.0, now=20.0, staleness=2.0) == [1.0, 2.0, 1.0, 0.0, 1.0, 0.0, 2.0]


def test_an_endpoint_not_picked_for_a_while_is_reprobed_once() -> None:
    p = LatencyPredictor(reprobe_every=5)
    x = [1.0] + [0.0] * (DIM - 1)
    for i, (addr, ttft) in enumerate((("slow:1", 0.5), ("fast:1", 0.05))):
        p.picked(f"w{i}", addr, x, 0.0)
        p.first_token(f"w{i}", addr, ttft)
    assert p.predict("slow:1", x).ttft == pytest.approx(0.5, rel=0.05)
    for i in range(4):
        p.picked(f"f{i}", "fast:1", x, 1.0)
    assert p.predict("slow:1", x).ttft == 0.0  # 5 picks since slow's last: due a re-probe
    assert p.predict("fast:1", x).ttft == pytest.approx(0.05, rel=0.05)
    p.picked("probe", "slow:1", x, 2.0)
    assert p.predict("slow:1", x).ttft == pytest.approx(
        0.5, rel=0.05
    )  # one probe at a time, then judged again
    assert LatencyPredictor().reprobe_every == 0  # off unless asked
