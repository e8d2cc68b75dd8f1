"""kvgate's cost scorer: prefix affinity that yields to load, on lag-free in-flight accounting."""

from __future__ import annotations

from collections import Counter

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.types import InferenceRequest

from .helpers import ep, fleet

PREFIX = "You are a helpful assistant. " * 40  # ~1,160 chars, 18 blocks


def _req(i: int, text: str) -> InferenceRequest:
    return InferenceRequest(f"r{i}", "m", prompt_text=text, max_tokens=100)


def test_repeated_prefix_sticks_then_spills_when_holder_is_loaded() -> None:
    store = fleet(4)
    d = build_director("kvgate", store, clock=lambda: 0.0, seed=0)
    first = d.pick(_req(0, PREFIX + "q0"))
    d.on_dispatched(_req(0, PREFIX + "q0"), first.primary)
    d.on_first_token(_req(0, PREFIX + "q0"), first.primary)
    holder = first.primary
    # Sequential requests that finish quickly: all go to the holder.
    for i in range(1, 6):
        r = _req(i, PREFIX + f"q{i}")
        res = d.pick(r)
        assert res.primary is holder
        d.on_dispatched(r, holder)
        d.on_finished(r, holder, None, True)
    # A burst that never finishes: the holder fills up and the prefix spills to others.
    picks: Counter[str] = Counter()
    for i in range(6, 40):
        r = _req(i, PREFIX + f"q{i}")
        res = d.pick(r)
        picks[res.primary.address] += 1
        d.on_dispatched(r, res.primary)
    # Cached requests add little prefill, so the holder keeps them until its in-flight load
    # (decodeWeight 32 per request) outweighs a miss elsewhere (3 x 290 tokens): ~27 requests here.
    assert picks[holder.address] >= 20
    assert len(picks) >= 2 and picks[holder.address] < 34  # then it spills instead of hot-spotting


def test_scraped_queue_steers_away_even_without_inflight() -> None:
    store = EndpointStore([ep("a:1", waiting_queue_size=20), ep("b:1", waiting_queue_size=0)])
    d = build_director("kvgate", store, clock=lambda: 0.0, seed=0)
    got = Counter(d.pick(_req(i, f"unique {i} " * 30)).primary.address for i in range(20))
    assert got == Counter({"b:1": 20})


def test_unique_prompts_spread_evenly() -> None:
    store = fleet(4)
    d = build_director("kvgate", store, clock=lambda: 0.0, seed=0)
    for i in range(40):
        r = _req(i, f"unique prompt {i} " * 20)
        d.on_dispatched(r, d.pick(r).primary)
    assert sorted(e.inflight.requests for e in store.all()) == [10, 10, 10, 10]


def test_explanation_carries_costs() -> None:
    d = build_director("kvgate", fleet(2), clock=lambda: 0.0, seed=0)
    res = d.pick(_req(0, PREFIX), explain=True)
    assert set(res.explanation["costs"]) == {"10.0.0.0:8000", "10.0.0.1:8000"}


def test_scraped_queue_counts_only_what_inflight_does_not_explain() -> None:
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    a, b = ep("a:1", waiting_queue_size=4), ep("b:1", waiting_queue_size=4)
    a.inflight.requests, a.inflight.pending_prefill_tokens = 4, 400  # a's queue is our own 4 requests
    s = KVGateCostScorer.create("k", Params({"decodeWeight": 0, "missPenalty": 0}, "p"), handle())
    ca, cb = s.costs(cycle("x" * 400), [a, b])
    assert ca == 400 + 100  # pending prefill + this prompt; the scraped 4 are already counted
    assert cb == 4 * s.mean_uncached + 100  # 4 requests from elsewhere, at the mean uncached size
    sat = KVGateCostScorer.create("k", Params({"queueThreshold": 4}, "p"), handle())
    b.metrics.waiting_queue_size = 0
    ca, cb = sat.costs(cycle("x" * 400), [a, b])
    assert ca > 1e6 > cb  # saturation override (opt-in): a is saturated, b is not


def _burst_on_backlogged_fleet(
    params: dict[str, object], waiting: int = 50, running: int = 0
) -> tuple[Counter[str], str]:
    # By default every replica already has 50 requests waiting (scraped): the fleet is overloaded.
    from kvgate.config.policies import policy_config

    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            spec.parameters = {**(spec.parameters or {}), **params}
    store = EndpointStore(
        [ep(f"10.0.0.{i}:8000", waiting_queue_size=waiting, running_requests=running) for i in range(4)]
    )
    d = build_director(cfg, store, clock=lambda: 0.0, seed=0)
    first = _req(0, PREFIX + "q0")
    holder = d.pick(first).primary
    d.on_dispatched(first, holder)
    picks: Counter[str] = Counter()
    for i in range(1, 150):
        r = _req(i, PREFIX + f"q{i}")
        res = d.pick(r)
        picks[res.primary.address] += 1
        d.on_dispatched(r, res.primary)
    return picks, holder.address


def test_overloaded_fleet_keeps_a_prefix_on_its_holder() -> None:
    # Spilling onto a replica with a backlog only adds a prefix recompute there and evicts others'
    # prefixes: with every queue long, the holder keeps the group (missQueueScale, default 1).
    picks, holder = _burst_on_backlogged_fleet({})
    assert picks == Counter({holder: 149})
    # Without the backlog term the same burst spills as the holder's own in-flight grows.
    picks, holder = _burst_on_backlogged_fleet({"missQueueScale": 0})
    assert len(picks) >= 2 and picks[holder] < 149


def test_a_running_batch_is_not_a_backlog() -> None:
    # Replicas busy decoding but with nothing waiting: the burst must still spill off the holder as its
    # own queue grows (only requests not yet started make a miss dearer).
    picks, holder = _burst_on_backlogged_fleet({}, waiting=0, running=8)
    assert len(picks) >= 2 and picks[holder] < 149
