"""Unit tests of the scorers, pickers, filters and baselines (reference formulas)."""

from __future__ import annotations

from collections import Counter

import pytest

from kvgate.scheduling.framework import Params
from kvgate.scheduling.plugins.baselines import LeastRequestPicker, RoundRobinPicker
from kvgate.scheduling.plugins.filters import HeaderBasedTestingFilter
from kvgate.scheduling.plugins.pickers import MaxScorePicker, RandomPicker, WeightedRandomPicker
from kvgate.scheduling.plugins.scorers import (
    KVCacheUtilizationScorer,
    LoraAffinityScorer,
    QueueScorer,
    RunningRequestsScorer,
    TokenLoadScorer,
)

from .helpers import cycle, ep, handle


def test_queue_scorer_min_max_and_stale() -> None:
    eps = [ep("a:1", waiting_queue_size=0), ep("b:1", waiting_queue_size=5), ep("c:1", waiting_queue_size=10)]
    s = QueueScorer("q", handle())
    assert s.score(cycle(), eps) == [1.0, 0.5, 0.0]
    assert s.score(cycle(), eps[:1] * 2) == [1.0, 1.0]  # all equal -> 1
    stale = ep("d:1", now=-10.0, waiting_queue_size=0)
    assert s.score(cycle(), [eps[1], stale]) == [1.0, 0.0]  # stale scores 0, range from fresh ones


def test_running_and_kv_scorers() -> None:
    eps = [
        ep("a:1", running_requests=2, kv_cache_usage=0.2),
        ep("b:1", running_requests=4, kv_cache_usage=0.9),
    ]
    assert RunningRequestsScorer("r", handle()).score(cycle(), eps) == [1.0, 0.0]
    assert KVCacheUtilizationScorer("k", handle()).score(cycle(), eps) == pytest.approx([0.8, 0.1])


def test_token_load_scorer_uses_inflight() -> None:
    a, b, c = ep("a:1"), ep("b:1"), ep("c:1")
    a.inflight.pending_prefill_tokens = 1000
    b.inflight.pending_decode_tokens = 500
    assert TokenLoadScorer("t", handle()).score(cycle(), [a, b, c]) == [0.0, 0.5, 1.0]


def test_lora_affinity_levels() -> None:
    eps = [
        ep("run:1", max_lora=2, running_loras=frozenset({"x", "y"})),
        ep("room:1", max_lora=2, running_loras=frozenset({"y"})),
        ep("wait:1", max_lora=1, running_loras=frozenset({"y"}), waiting_loras=frozenset({"x"})),
        ep("full:1", max_lora=1, running_loras=frozenset({"y"})),
    ]
    s = LoraAffinityScorer("l", handle())
    assert s.score(cycle(lora_adapter="x"), eps) == [1.0, 0.8, 0.6, 0.0]
    assert s.score(cycle(), eps) == [1.0] * 4


def test_max_score_picker_ties_random_and_fallback_list() -> None:
    eps = [ep(f"e{i}:1") for i in range(4)]
    p = MaxScorePicker("p", handle(seed=1))
    wins = Counter(p.pick(cycle(), eps, [0.5, 0.9, 0.9, 0.1])[0].address for _ in range(200))
    assert set(wins) == {"e1:1", "e2:1"} and min(wins.values()) > 50
    p3 = MaxScorePicker.create("p3", Params({"maxNumOfEndpoints": 3}, "x"), handle())
    assert [e.address for e in p3.pick(cycle(), eps, [0.1, 0.9, 0.5, 0.3])] == ["e1:1", "e2:1", "e3:1"]


def test_random_and_weighted_pickers() -> None:
    eps = [ep(f"e{i}:1") for i in range(3)]
    r = RandomPicker("r", handle(seed=2))
    assert len({r.pick(cycle(), eps, [0, 0, 0])[0].address for _ in range(100)}) == 3
    w = WeightedRandomPicker("w", handle(seed=3))
    got = Counter(w.pick(cycle(), eps, [0.0, 1.0, 3.0])[0].address for _ in range(2000))
    assert got["e0:1"] == 0 and 2.2 < got["e2:1"] / got["e1:1"] < 4.0
    w2 = WeightedRandomPicker.create("w2", Params({"maxNumOfEndpoints": 2}, "x"), handle())
    assert {e.address for e in w2.pick(cycle(), eps, [0.0, 1.0, 3.0])} == {"e1:1", "e2:1"}


def test_round_robin_and_least_request() -> None:
    eps = [ep(f"e{i}:1") for i in (2, 0, 1)]
    rr = RoundRobinPicker("rr", handle())
    assert [rr.pick(cycle(), eps, [0] * 3)[0].address for _ in range(4)] == ["e0:1", "e1:1", "e2:1", "e0:1"]
    # The peers count requests (``InFlight.calls``, whatever their sequences: review s21-fixes-c F2, where
    # setting ``requests`` left every load at 0 and the seeded tie-break chose); both orders checked.
    for loads, want in (((3, 1, 2), "e0:1"), ((1, 3, 2), "e2:1")):
        for e, n in zip(eps, loads, strict=True):
            e.inflight.calls = n
        assert LeastRequestPicker("lr", handle()).pick(cycle(), eps, [0] * 3)[0].address == want


def test_header_based_testing_filter() -> None:
    eps = [ep("10.0.0.1:8000"), ep("10.0.0.2:8000"), ep("10.0.0.2:9000")]
    f = HeaderBasedTestingFilter("h", handle())
    assert f.filter(cycle(), eps) == eps
    got = f.filter(cycle(headers={"test-epp-endpoint-selection": "10.0.0.2:9000,10.0.0.1"}), eps)
    assert [e.address for e in got] == ["10.0.0.2:9000", "10.0.0.1:8000"]
    assert f.filter(cycle(headers={"test-epp-endpoint-selection": "10.9.9.9"}), eps) == []


def test_params_reject_bad_values_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"p\.maxNumOfEndpoints: must be >= 1"):
        MaxScorePicker.create("p", Params({"maxNumOfEndpoints": 0}, "p"), handle())
    with pytest.raises(ValueError, match=r"p\.bogus: unknown parameter"):
        MaxScorePicker.create("p", Params({"bogus": 1}, "p"), handle())
    with pytest.raises(ValueError, match=r"p\.decodeWeight: must be a number"):
        TokenLoadScorer.create("t", Params({"decodeWeight": "x"}, "p"), handle())
