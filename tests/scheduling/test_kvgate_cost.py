"""kvgate's cost scorer: prefix affinity that yields to load, on lag-free in-flight accounting."""

from __future__ import annotations

from array import array
from collections import Counter

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import CycleState
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
    # (decodeWeight 32 per request) outweighs a miss elsewhere (290 tokens: the other caches are empty,
    # so a miss there displaces nothing and costs only its prefill): ~15 requests here.
    assert picks[holder.address] >= 10
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


def test_a_miss_costs_more_where_the_cache_is_full() -> None:
    # The displacement part of a miss (missPenalty) is scaled by the KV already in use there: writing an
    # uncached prompt into an empty cache evicts nothing; into a full one it evicts others' prefixes.
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    empty, full = ep("a:1", kv_cache_usage=0.0), ep("b:1", kv_cache_usage=0.85)
    s = KVGateCostScorer.create("k", Params({"decodeWeight": 0}, "p"), handle())
    ce, cf = s.costs(cycle("x" * 400), [empty, full])
    assert ce == 100 * 1.0  # 100 uncached tokens x (1 + 2 x 0.0)
    assert abs(cf - 100 * (1 + 2 * 0.85)) < 1e-9
    old = KVGateCostScorer.create("k", Params({"decodeWeight": 0, "kvScaledMiss": False}, "p"), handle())
    assert old.costs(cycle("x" * 400), [empty, full]) == [300.0, 300.0]
    # No fresh metrics: the fill is unknown and the miss is costed as a full cache's.
    stale = ep("c:1", now=-100.0, kv_cache_usage=0.0)
    assert s.costs(cycle("x" * 400), [stale])[0] == 300.0


def test_learned_pace_scales_a_slow_replicas_costs() -> None:
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    fast, slow = ep("a:1"), ep("b:1")
    for e in (fast, slow):
        e.inflight.requests, e.inflight.pending_prefill_tokens = 2, 200
    s = KVGateCostScorer.create("k", Params({"kvScaledMiss": False}, "p"), handle())
    same = s.costs(cycle("x" * 400), [fast, slow])
    assert same[0] == same[1]
    slow.inflight.pace = 0.04  # pace known for one replica only: nothing is scaled yet
    assert s.costs(cycle("x" * 400), [fast, slow]) == same
    fast.inflight.pace = 0.02
    cf, cs = s.costs(cycle("x" * 400), [fast, slow])
    assert cf == same[0] and cs == 2 * same[1]  # the same work takes twice as long on b
    off = KVGateCostScorer.create("k", Params({"kvScaledMiss": False, "learnPace": False}, "p"), handle())
    assert off.costs(cycle("x" * 400), [fast, slow]) == same


def test_director_learns_speed_from_first_token_to_finish_per_batch_slot() -> None:
    from kvgate.scheduling.speed import BATCH_KNEE
    from kvgate.scheduling.types import Usage

    now = [0.0]
    store = fleet(2)
    d = build_director("kvgate", store, clock=lambda: now[0], seed=0)
    target = None
    for i in range(d.speed.min_samples):
        r = _req(i, "hello " * 50)
        target = d.pick(r).primary if target is None else target
        d.on_dispatched(r, target)
        d.on_first_token(r, target)
        assert target.inflight.pace == 0.0  # nothing published before min_samples responses
        now[0] += 99 * 0.03
        d.on_finished(r, target, Usage(50, 100, 0), True)
    assert target is not None
    # 30 ms per token, alone in its batch: 0.03 s over (1 sequence + the batch knee) token-slots.
    assert abs(target.inflight.pace - 0.03 / (1 + BATCH_KNEE)) < 1e-12


def _cold_burst(params: dict[str, object], n: int = 12) -> tuple[Counter[str], str]:
    # Four replicas with caches 80% full and nothing queued; one prefix arrives as a burst of ``n``
    # requests, none of which has started yet.
    from kvgate.config.policies import policy_config

    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            spec.parameters = {**(spec.parameters or {}), **params}
    store = EndpointStore([ep(f"10.0.0.{i}:8000", kv_cache_usage=0.8) for i in range(4)])
    d = build_director(cfg, store, clock=lambda: 0.0, seed=0)
    picks: Counter[str] = Counter()
    holder = ""
    for i in range(n):
        r = _req(i, PREFIX + f"q{i}")
        res = d.pick(r)
        holder = holder or res.primary.address
        picks[res.primary.address] += 1
        d.on_dispatched(r, res.primary)
    return picks, holder


def test_a_burst_shares_the_cost_of_a_second_copy() -> None:
    # Without sharing, a second copy of the prefix is charged its full displacement (1 + 2 x 0.8 its
    # prefill), so the holder keeps the whole burst queued behind the first prefill.
    alone, holder = _cold_burst({"sharedCopy": False})
    assert alone == Counter({holder: 12})
    # With it, the requests already waiting for this prefix at the holder share the copy's
    # displacement: the burst spills to a second replica.
    shared, holder = _cold_burst({})
    assert len(shared) >= 2 and shared[holder] < 12


def test_a_burst_shares_a_copy_with_the_precise_prefix_source_too() -> None:
    # The profile ``--kv-events auto`` runs: the prefix signal comes from the engines' KV events plus
    # the precise scorer's credit for each pick (nothing reported yet: the burst is cold). The followers
    # wait on the prefix the first request is computing just the same, so they share a second copy.
    from kvgate.config.policies import precise_policy

    def burst(params: dict[str, object], index_name: str) -> tuple[Counter[str], str]:
        doc = precise_policy("", bind=False)
        for plugin in doc["plugins"]:
            if plugin["type"] == "precise-prefix-cache-scorer":
                plugin["parameters"]["indexName"] = index_name  # not shared with other tests
            if plugin["type"] == "kvgate-cost-scorer":
                plugin["parameters"] = {**plugin["parameters"], **params}
        store = EndpointStore([ep(f"10.0.1.{i}:8000", kv_cache_usage=0.8) for i in range(4)])
        d = build_director(doc, store, clock=lambda: 0.0, seed=0)
        prefix = [7] * 1152  # 72 blocks of 16 tokens
        picks: Counter[str] = Counter()
        holder = ""
        for i in range(12):
            r = InferenceRequest(f"r{i}", "m", token_ids=prefix + [i] * 16, max_tokens=100)
            res = d.pick(r)
            holder = holder or res.primary.address
            picks[res.primary.address] += 1
            d.on_dispatched(r, res.primary)
        return picks, holder

    alone, holder = burst({"sharedCopy": False}, "shared-copy-off")
    assert alone == Counter({holder: 12})
    shared, holder = burst({}, "shared-copy-on")
    assert len(shared) >= 2 and shared[holder] < 12


def test_requests_that_started_no_longer_share_a_copy() -> None:
    # Sequential requests of one prefix (each at its first token before the next): nothing waits on
    # the prefix, so affinity is as without sharing.
    store = EndpointStore([ep(f"10.0.0.{i}:8000", kv_cache_usage=0.8) for i in range(4)])
    d = build_director("kvgate", store, clock=lambda: 0.0, seed=0)
    seen: Counter[str] = Counter()
    for i in range(12):
        r = _req(i, PREFIX + f"q{i}")
        target = d.pick(r).primary
        seen[target.address] += 1
        d.on_dispatched(r, target)
        d.on_first_token(r, target)
    assert len(seen) == 1
    scorer = next(p for p in d.handle.plugins.values() if type(p).__name__ == "KVGateCostScorer")
    assert not scorer._waiting and not scorer._waiting_at  # forgotten at the first token


def test_requests_waiting_on_a_prefix_are_bounded() -> None:
    # Picked requests whose response events never come (a client gone before dispatch) cannot grow the
    # map: past the bound the oldest are forgotten.
    from kvgate.scheduling.plugins import kvgate_cost

    store = fleet(2)
    d = build_director("kvgate", store, clock=lambda: 0.0, seed=0)
    scorer = next(p for p in d.handle.plugins.values() if isinstance(p, kvgate_cost.KVGateCostScorer))
    for i in range(kvgate_cost.MAX_WAITING_TRACKED + 10):
        d.pick(_req(i, f"prompt {i} " * 20))
    assert len(scorer._waiting) == kvgate_cost.MAX_WAITING_TRACKED
    assert sum(len(w) for w in scorer._waiting_at.values()) == kvgate_cost.MAX_WAITING_TRACKED
    assert "r0" not in scorer._waiting
    # Their hashes are kept compact: 8-byte words, not lists of Python ints (2,048 keys x 4,096 requests).
    kept = [h for w in scorer._waiting_at.values() for h in w.values()]
    assert all(isinstance(h, array) and h.typecode == "Q" for h in kept)


def test_replicate_loaded_copies_a_prefix_whose_holders_are_loaded_past_its_saving() -> None:
    # The holder has the prefix's first request and another one queued: more prefill in front than a
    # hit there saves. By default a second copy still pays its displacement (the cache is 80% full) and
    # the request waits at the holder; with replicateLoaded the copy costs its prefill only and goes to
    # the idle replica, which the index then counts as a holder too.
    def second_pick(params: dict[str, object], busy_other: bool = False) -> tuple[str, str, str]:
        from kvgate.config.policies import policy_config

        cfg = policy_config("kvgate")
        for spec in cfg.plugins:
            if spec.type == "kvgate-cost-scorer":
                spec.parameters = {**(spec.parameters or {}), "sharedCopy": False, **params}
        store = EndpointStore([ep(f"10.0.0.{i}:8000", kv_cache_usage=0.8) for i in range(2)])
        d = build_director(cfg, store, clock=lambda: 0.0, seed=0)
        first = _req(0, PREFIX + "q0")
        holder = d.pick(first).primary
        d.on_dispatched(first, holder)
        other = _req(9, "z" * 400)  # 100 tokens of another prompt, queued at the holder too
        d.on_dispatched(other, holder)
        if busy_other:  # the would-be copy's replica has a short prompt queued: the copy would delay it
            rest = next(e for e in store.all() if e is not holder)
            d.on_dispatched(_req(8, "y" * 40), rest)
        second = _req(1, PREFIX + "q1")
        got = d.pick(second).primary
        d.on_dispatched(second, got)
        third = d.pick(_req(2, PREFIX + "q2")).primary  # both hold it now: the less loaded one
        return holder.address, got.address, third.address

    holder, got, _ = second_pick({})
    assert got == holder
    holder, got, third = second_pick({"replicateLoaded": True})
    assert got != holder
    assert third == got  # the new copy is a holder with less queued than the first
    holder, got, _ = second_pick({"replicateLoaded": True}, busy_other=True)
    assert got == holder  # a copy is made only where it delays no one


def test_inflight_accounting_reads_the_precise_match() -> None:
    # With the precise profile, a request dispatched to the holder of its prefix (credited at the first
    # pick) counts only its uncached tokens as pending prefill, not its whole prompt.
    from kvgate.config.policies import precise_policy

    doc = precise_policy("", bind=False)
    for plugin in doc["plugins"]:
        if plugin["type"] == "precise-prefix-cache-scorer":
            plugin["parameters"]["indexName"] = "inflight-precise"
    store = EndpointStore.from_addresses(["10.0.2.1:8000", "10.0.2.2:8000"])
    d = build_director(doc, store, clock=lambda: 0.0, seed=0)
    prefix = [7] * 1024  # 64 blocks of 16 tokens
    targets = []
    for i in range(2):
        r = InferenceRequest(f"r{i}", "m", token_ids=prefix + [i] * 16, max_tokens=10)
        targets.append(d.pick(r).primary)
        d.on_dispatched(r, targets[-1])
    assert targets[0] is targets[1]
    assert 1040 + 15 <= targets[0].inflight.pending_prefill_tokens <= 1040 + 16  # 16 uncached, not 1,040


def test_head_of_line_learns_seconds_per_prefill_token_from_first_tokens() -> None:
    from kvgate.config.policies import policy_config
    from kvgate.scheduling.plugins.kvgate_cost import SPT_CLAMP, SPT_MIN_TOKENS, SPT_WARMUP, KVGateCostScorer

    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            spec.parameters = {**(spec.parameters or {}), "headOfLine": True}
    now = [0.0]
    d = build_director(cfg, fleet(2), clock=lambda: now[0], seed=0)
    s = d.handle.find(KVGateCostScorer)
    assert s is not None and s.head_of_line and s.spt == 0.0
    tokens = 0
    n = [0]

    def first_token_after(seconds: float, learn: bool = True) -> None:
        nonlocal tokens
        n[0] += 1
        text = f"unique long prompt {n[0]} " * 400  # ~9,000 chars: over 2,000 tokens to compute
        tokens = len(text) // 4
        r = _req(n[0], text)
        picked = d.pick(r).primary
        d.on_dispatched(r, picked)
        now[0] += seconds
        d.on_first_token(r, picked, learn=learn)
        d.on_finished(r, picked, None, True)

    # A non-streamed reply (its first token comes with its last) or an error teaches nothing.
    first_token_after(30.0, learn=False)
    assert s.spt == 0.0
    # One sample does not set it: the median of the first SPT_WARMUP does (an odd one is outvoted).
    first_token_after(20.0)
    assert s.spt == 0.0
    for _ in range(SPT_WARMUP - 1):
        first_token_after(0.5)
    assert tokens >= SPT_MIN_TOKENS
    assert abs(s.spt - 0.5 / tokens) < 0.1 * s.spt  # seconds per token computed before its first token
    # After that an outlier moves it at most 10% of SPT_CLAMP times it, either way.
    learned = s.spt
    first_token_after(1000.0)
    assert learned < s.spt <= learned + 0.1 * (SPT_CLAMP - 1) * learned * 1.01
    learned = s.spt
    first_token_after(1e-6)
    assert learned > s.spt >= learned - 0.1 * learned * 1.01
    # A short prompt is mostly the step's fixed overhead: it teaches nothing.
    learned = s.spt
    short = _req(99, "short one")
    picked = d.pick(short).primary
    d.on_dispatched(short, picked)
    now[0] += 5.0
    d.on_first_token(short, picked)
    assert s.spt == learned


def test_a_long_cold_prefill_avoids_the_endpoint_with_more_arrivals() -> None:
    # Two idle endpoints, equal in every scraped and in-flight figure; one has had four times the
    # requests sent to it lately. A long uncached prefill blocks whatever arrives where it runs, so it
    # goes where fewer requests are expected; a short one hardly blocks anyone, and without the
    # head-of-line cost (headOfLine, off by default) both costs are equal.
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    busy, quiet = ep("a:1"), ep("b:1")
    s = KVGateCostScorer.create("k", Params({"headOfLine": True}, "p"), handle())
    off = KVGateCostScorer.create("k", Params({}, "p"), handle())  # off by default
    for sc in (s, off):
        for i in range(8):
            sc.on_picked(cycle(f"q{i}", now=float(i)), busy)
        for i in range(2):
            sc.on_picked(cycle(f"p{i}", now=float(i)), quiet)
        sc.spt = 1e-4  # as learned: 0.1 s per 1,000 tokens
    assert s.arrival_rate("a:1", 8.0) > 3 * s.arrival_rate("b:1", 8.0) > 0
    long, short = "x" * 4 * 8000, "x" * 4 * 50  # 8,000 and 50 uncached tokens
    cb, cq = s.costs(cycle(long, now=8.0), [busy, quiet])
    assert cb > cq
    # busy's extra: (rate difference) x spt x u x u/2, about 8,000 tokens x 0.1 arrivals expected more
    extra = (s.arrival_rate("a:1", 8.0) - s.arrival_rate("b:1", 8.0)) * 1e-4 * 8000 * 4000
    assert abs((cb - cq) - extra) < 1e-6 * cb
    sb, sq = s.costs(cycle(short, now=8.0), [busy, quiet])
    assert sb - sq < 0.01 * (cb - cq)
    ob, oq = off.costs(cycle(long, now=8.0), [busy, quiet])
    assert ob == oq


def test_head_of_line_state_is_bounded() -> None:
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins import kvgate_cost
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    s = KVGateCostScorer.create("k", Params({"headOfLine": True}, "p"), handle())
    for i in range(kvgate_cost.MAX_ENDPOINTS_TRACKED + 10):
        s.on_picked(cycle("x" * 8000, now=float(i)), ep(f"10.{i // 250}.{i % 250}.1:80"))
    assert len(s._arrivals) == kvgate_cost.MAX_ENDPOINTS_TRACKED
    assert len(s._timed) <= kvgate_cost.MAX_WAITING_TRACKED
    assert "10.0.0.1:80" not in s._arrivals  # the longest unpicked went first


def test_head_of_line_arrival_rate_never_grows_when_the_clock_steps_back() -> None:
    from kvgate.scheduling.framework import PluginHandle
    from kvgate.scheduling.plugins.kvgate_cost import RATE_WINDOW_S, KVGateCostScorer

    s = KVGateCostScorer("c", PluginHandle(), head_of_line=True)
    s._arrivals["a"] = (3.0, 10.0)
    assert s.arrival_rate("a", 5.0) == 3.0 / RATE_WINDOW_S


# A tenant context longer than the approximate scorer's hashed window (256 blocks x 64 chars = 16,384).
LONG = "".join(f"tenant context sentence {i}. " for i in range(700))


def _long_burst(params: dict[str, object], n: int = 12) -> tuple[Counter[str], dict[str, int]]:
    # A cold burst of one long context, each request with its own ~325-token question past the window.
    from kvgate.config.policies import policy_config

    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            spec.parameters = {**(spec.parameters or {}), **params}
    store = EndpointStore([ep(f"10.0.0.{i}:8000", kv_cache_usage=0.8) for i in range(4)])
    d = build_director(cfg, store, clock=lambda: 0.0, seed=0)
    picks: Counter[str] = Counter()
    for i in range(n):
        r = _req(i, LONG + f"question {i} " * 100)
        res = d.pick(r)
        picks[res.primary.address] += 1
        d.on_dispatched(r, res.primary)
    return picks, {e.address: e.inflight.pending_prefill_tokens for e in store.all()}


def test_burst_tail_counts_each_followers_own_question_past_the_hashed_window() -> None:
    # Without it, a full match of the hashed window is extrapolated over the whole prompt: every follower
    # looks fully cached at the holder, adds nothing to its pending prefill, and the burst piles there.
    alone, pending = _long_burst({})
    holder = next(iter(alone))
    assert alone == Counter({holder: 12})
    assert pending[holder] == len(LONG + "question 0 " * 100) // 4  # only the first request's prefill
    # With it, each follower's question (past the part of the tail it shares with the requests waiting
    # at the holder) is counted uncached there, so the holder looks as loaded as it is and the burst
    # spreads as a burst of short-context requests does.
    spread, pending = _long_burst({"burstTail": True})
    assert len(spread) >= 2 and max(spread.values()) < 12


def test_burst_tail_counts_only_the_part_of_the_tail_not_shared() -> None:
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
    from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer

    from .helpers import cycle, handle

    h = handle()
    prefix = PrefixCacheScorer.create("prefix-cache-scorer", Params({}, "p"), h)
    h.plugins = {"prefix-cache-scorer": prefix}
    s = KVGateCostScorer.create("k", Params({"burstTail": True, "decodeWeight": 0}, "p"), h)
    a = ep("a:1", kv_cache_usage=0.0)
    first = cycle(LONG + "same question " * 60)
    prefix.prepare(first, [a])
    s.on_picked(first, a)
    prefix.on_picked(first, a)
    # The same prompt again while the first waits: its tail is the first one's; only what is past its
    # last full 128-token stride (keys cover full strides) counts as its own.
    again = cycle(LONG + "same question " * 60)
    prefix.prepare(again, [a])
    assert s.costs(again, [a])[0] < 128
    # Another question: the tokens past the shared part are its own, to within one 128-token stride.
    other = cycle(LONG + "other question " * 60)
    prefix.prepare(other, [a])
    (c,) = s.costs(other, [a])
    own = len("other question " * 60) / 4
    assert own <= c <= own + 128


def test_tail_keys_agree_as_far_as_two_long_prompts_do() -> None:
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.prefix_cache import TAIL_STRIDE, PrefixCacheScorer, prefix_match

    from .helpers import cycle, handle

    p = PrefixCacheScorer.create("p", Params({}, "p"), handle())
    a = ep("a:1")

    def keys(text: str) -> list[int]:
        c = cycle(text)
        p.prepare(c, [a])
        m = prefix_match(c)
        assert m is not None
        return list(m.tail_keys())

    assert keys("short prompt " * 100) == []  # fits the window: no tail
    stride = 64 * TAIL_STRIDE  # characters per tail key at 16-token blocks
    x, y = keys(LONG + "a" * 3 * stride), keys(LONG + "a" * stride + "b" * 2 * stride)
    window_part = (len(LONG) - 256 * 64) // stride  # LONG's own tail strides, then the questions'
    assert len(x) == len(y) == window_part + 3
    assert x[: window_part + 1] == y[: window_part + 1] and x[window_part + 1] != y[window_part + 1]


def test_output_displacement_sends_a_long_output_where_the_cache_is_emptier() -> None:
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    emptier, fuller = ep("a:1", kv_cache_usage=0.2), ep("b:1", kv_cache_usage=0.6)
    params = {"decodeWeight": 0}
    off = KVGateCostScorer.create("k", Params(dict(params), "p"), handle())
    on = KVGateCostScorer.create("k", Params({**params, "outputDisplacement": True}, "p"), handle())
    # 100 uncached prompt tokens, 1,000 output tokens: without it only the prompt's blocks displace.
    ce, cf = off.costs(cycle("x" * 400, max_tokens=1000), [emptier, fuller])
    assert abs((cf - ce) - 2 * 0.4 * 100) < 1e-9
    # With it the output's blocks (cached as they are generated) displace too, 2 x fill each.
    oe, of = on.costs(cycle("x" * 400, max_tokens=1000), [emptier, fuller])
    assert abs(oe - ce - 2 * 0.2 * 1000) < 1e-9 and abs(of - cf - 2 * 0.6 * 1000) < 1e-9


def _cold_spread_director(on: bool) -> tuple[Director, EndpointStore]:
    from kvgate.config.policies import policy_config

    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            # Plain coldSpread (every cold prompt priced) against none: since fam31 the kvgate policy
            # prices decode-heavy cold requests only, and these one-offs (100 output tokens) are not.
            cold = {"coldSpread": on, "coldSpreadDecodeHeavy": False}
            spec.parameters = {**(spec.parameters or {}), **cold}
    store = fleet(2)
    return build_director(cfg, store, clock=lambda: 0.0, seed=0), store


def test_cold_spread_sends_cold_prompts_away_from_the_cache_serving_hits() -> None:
    # One endpoint has served a prefix's hits (a tenant between bursts); the other holds nothing anyone
    # reuses. Every load figure is equal again when the cold prompts come (each request finishes), so
    # without coldSpread their costs tie; with it, a prompt no endpoint holds goes where it evicts no
    # reuse, while the warm requests keep going to their holder.
    for on in (False, True):
        d, store = _cold_spread_director(on)
        holder = None
        for i in range(6):
            r = _req(i, PREFIX + f"q{i}")
            got = d.pick(r).primary
            holder = holder or got
            assert got is holder
            d.on_dispatched(r, got)
            d.on_finished(r, got, None, True)
        assert holder is not None
        other = next(e for e in store.all() if e is not holder)
        cold: Counter[str] = Counter()
        for i in range(10):
            r = _req(100 + i, f"a one-off nobody holds {i} " * 30)
            res = d.pick(r, explain=True)
            cold[res.primary.address] += 1
            costs = res.explanation["costs"]
            if on:
                assert costs[holder.address] > costs[other.address]
            else:
                assert costs[holder.address] == costs[other.address]
            d.on_dispatched(r, res.primary)
            d.on_finished(r, res.primary, None, True)
        if on:
            assert cold == Counter({other.address: 10})
        # A warm request still goes to its holder.
        r = _req(200, PREFIX + "q200")
        assert d.pick(r).primary is holder


def test_cold_spread_prices_the_reuse_a_cold_prompt_evicts() -> None:
    # The extra cost of a cold prompt at an endpoint is missPenalty x (its reuse rate - the lowest) /
    # the mean reuse rate x the prompt's uncached tokens; a prompt a candidate holds pays none.
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    a, b = ep("a:1"), ep("b:1")
    s = KVGateCostScorer.create("k", Params({"coldSpread": True, "coldSpreadWindow": "60s"}, "p"), handle())
    off = KVGateCostScorer.create("k", Params({}, "p"), handle())
    assert s.cold_spread and s.cold_spread_window == 60.0 and not off.cold_spread
    s._add_reused("a:1", 1800.0, 0.0)
    s._add_reused("b:1", 1200.0, 0.0)
    assert abs(s.reuse_rate("a:1", 0.0) - 30.0) < 1e-9
    text = "x" * 4 * 800  # 800 tokens, cached nowhere
    ca, cb = s.costs(cycle(text), [a, b])
    oa, ob = off.costs(cycle(text), [a, b])
    assert oa == ob
    assert abs((ca - cb) - 2.0 * (30.0 - 20.0) / 25.0 * 800) < 1e-6
    assert cb == ob  # the least reused endpoint pays nothing extra
    # The rates decay: after a window both are e^-1 of what they were, and their ratio holds.
    assert abs(s.reuse_rate("a:1", 60.0) - 30.0 / 2.718281828459045) < 1e-6


def test_cold_spread_premium_is_at_most_one_more_full_cache_displacement() -> None:
    # Every hit on one replica of three: it is 3x the mean reuse rate, but an evicted token costs at most
    # one more missPenalty, not three (uncapped, the other two would look so cheap that the term
    # outweighed every load term).
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    a, b, c = ep("a:1"), ep("b:1"), ep("c:1")
    s = KVGateCostScorer.create("k", Params({"coldSpread": True}, "p"), handle())
    s._add_reused("a:1", 9000.0, 0.0)
    ca, cb, cc = s.costs(cycle("x" * 4 * 800), [a, b, c])
    assert cb == cc
    assert abs((ca - cb) - 2.0 * 800) < 1e-6


def test_cold_spread_state_is_bounded_and_never_grows_when_the_clock_steps_back() -> None:
    from kvgate.scheduling.framework import PluginHandle
    from kvgate.scheduling.plugins import kvgate_cost
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    s = KVGateCostScorer("c", PluginHandle(), cold_spread=True)
    for i in range(kvgate_cost.MAX_ENDPOINTS_TRACKED + 10):
        s._add_reused(f"10.{i // 250}.{i % 250}.1:80", 100.0, float(i))
    assert len(s._reused) == kvgate_cost.MAX_ENDPOINTS_TRACKED
    assert "10.0.0.1:80" not in s._reused  # the longest unreused went first
    s._reused["a"] = (3.0, 10.0)
    assert s.reuse_rate("a", 5.0) == 3.0 / s.cold_spread_window
    s._add_reused("a", 1.0, 5.0)
    assert s._reused["a"] == (4.0, 10.0)


def test_burst_tail_hashes_each_requests_tail_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """burstTail's tail keys are computed once per request, on its match (``PrefixMatch.tail_keys``), and
    used by both the cost of the pick and the request's entry among those waiting (left11: session 9's
    closing note "burstTail hashes a tail twice"; the second hashing is the director's held-prefix keys,
    ``datalayer.prefixrefs.chain_keys``, a separate chain)."""
    from kvgate.scheduling.plugins import prefix_cache

    hashed: list[int] = []
    real = prefix_cache._h64

    def counting(data: bytes) -> int:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(prefix_cache, "_h64", counting)
    n = 12
    _long_burst({"burstTail": True}, n)
    stride = 64 * prefix_cache.TAIL_STRIDE  # characters: 64-character blocks (256 of them hashed)
    assert hashed and all(size == stride + 8 for size in hashed)  # a stride and the key it chains on
    strides = sum((len(LONG + f"question {i} " * 100) - 256 * 64) // stride for i in range(n))
    assert len(hashed) == strides  # each request's once (twice: 2 x strides)


def _warm_cycle(text: str, now: float, held: dict[str, int]) -> CycleState:
    # A pick whose prompt the prefix scorer found cached (``held``: address -> leading blocks of 4).
    from kvgate.scheduling.plugins.prefix_cache import CYCLE_KEY, PrefixMatch

    from .helpers import cycle

    c = cycle(text, now=now)
    c.data[CYCLE_KEY] = PrefixMatch(hashes=[1, 2, 3, 4], matched=held, chunk=64)
    return c


def test_cold_warm_delay_sends_a_cold_prefill_where_fewer_warm_requests_arrive() -> None:
    # Two idle endpoints, equal in every scraped and in-flight figure and in requests sent lately (eight
    # each), but eight of busy's were warm (they found their context there) and two of quiet's. The
    # warm ones keep coming back to their holder, so a cold 8,000-token prefill at busy blocks more of
    # them: coldWarmDelay (off by default) charges it (warm-rate difference) x spt x u x u/2; headOfLine,
    # which counts every arrival, sees no difference; a warm request's costs are unchanged.
    from typing import Any

    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer

    from .helpers import cycle, handle

    busy, quiet = ep("a:1"), ep("b:1")
    text = "x" * 4 * 8000  # 8,000 prompt tokens
    on = KVGateCostScorer.create("k", Params({"coldWarmDelay": True}, "p"), handle())
    hol = KVGateCostScorer.create("k", Params({"headOfLine": True}, "p"), handle())
    off = KVGateCostScorer.create("k", Params({}, "p"), handle())  # off by default
    for sc in (on, hol, off):
        for _ in range(8):
            sc.on_picked(_warm_cycle(text, 0.0, {"a:1": 4}), busy)
        for _ in range(2):
            sc.on_picked(_warm_cycle(text, 0.0, {"b:1": 4}), quiet)
        for _ in range(6):
            sc.on_picked(cycle(text, now=0.0), quiet)  # cold picks: not warm arrivals
        sc.spt = 1e-4  # as learned: 0.1 s per 1,000 tokens
    assert on.warm_rate("a:1", 1.0) == 4 * on.warm_rate("b:1", 1.0) > 0
    assert hol.arrival_rate("a:1", 1.0) == hol.arrival_rate("b:1", 1.0)
    cold: Any = cycle(text, now=1.0)
    cb, cq = on.costs(cold, [busy, quiet])
    ob, oq = off.costs(cycle(text, now=1.0), [busy, quiet])
    assert ob == oq
    extra = (on.warm_rate("a:1", 1.0) - on.warm_rate("b:1", 1.0)) * 1e-4 * 8000 * 4000
    assert cb > cq and abs((cb - cq) - extra) < 1e-6 * cb
    assert on.score(cycle(text, now=1.0), [busy, quiet])[1] == 1.0  # quiet is picked
    hb, hq = hol.costs(cycle(text, now=1.0), [busy, quiet])
    assert hb == hq
    # A warm request, half its prompt held at quiet only (uncached tokens at both, so the check can fail:
    # rev-d35 F1): priced as without the option.
    assert on.costs(_warm_cycle(text, 1.0, {"b:1": 2}), [busy, quiet]) == off.costs(
        _warm_cycle(text, 1.0, {"b:1": 2}), [busy, quiet]
    )


def test_cold_warm_delay_learns_spt_and_its_state_is_bounded() -> None:
    # Without headOfLine the option still learns seconds per prefill token (or it would never price),
    # and its warm counts are kept for at most MAX_ENDPOINTS_TRACKED endpoints.
    from kvgate.scheduling.framework import Params
    from kvgate.scheduling.plugins import kvgate_cost
    from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
    from kvgate.scheduling.types import InferenceRequest

    from .helpers import handle

    s = KVGateCostScorer.create("k", Params({"coldWarmDelay": True}, "p"), handle())
    text = "x" * 4 * 8000
    for i in range(kvgate_cost.SPT_WARMUP):
        c = _warm_cycle(text, float(i), {})
        c.request = InferenceRequest(f"r{i}", "m", prompt_text=text)
        s.on_picked(c, ep("a:1"))
        s.on_first_token(c.request, ep("a:1"), float(i) + 0.8)
    assert s.spt == pytest.approx(0.8 / 8000)
    for i in range(kvgate_cost.MAX_ENDPOINTS_TRACKED + 10):
        s.on_picked(_warm_cycle(text, float(i), {"x": 4}), ep(f"10.{i // 250}.{i % 250}.1:80"))
    assert len(s._warm) == 0  # held elsewhere ("x"): cold here, not a warm arrival
    for i in range(kvgate_cost.MAX_ENDPOINTS_TRACKED + 10):
        a = f"10.{i // 250}.{i % 250}.1:80"
        s.on_picked(_warm_cycle(text, float(i), {a: 4}), ep(a))
    assert len(s._warm) == kvgate_cost.MAX_ENDPOINTS_TRACKED
    assert "10.0.0.1:80" not in s._warm  # the longest unpicked went first
