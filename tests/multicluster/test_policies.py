"""Cluster policies on hand-made snapshots: health gating, capacity, anti-herding, locality, affinity."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from kvgate.datalayer.aggregate import PoolAggregate, build_bloom
from kvgate.multicluster.clusters import ClustersError, ClustersFile, ClusterSpec, parse
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy, KvgateWeights, LlmdHub, make_policy
from kvgate.multicluster.state import ClusterState
from kvgate.scheduling.prefix import block_hashes


def _state(name: str, *, ready: int = 4, cap: float = 4.0, head: float = 2.0, q: float = 0.0,
           kv: float = 0.5, at: float = 0.0, rtt: float = 0.0, age: float = 0.0, snap: float = 1.0,
           **kw: object) -> ClusterState:  # fmt: skip
    st = ClusterState(ClusterSpec(name, gateway=f"{name}:80", rtt_ms=rtt))
    st.set_aggregate(
        PoolAggregate(name, snap, ready, ready, average_kv_cache_utilization=kv, average_queue_size=q,
                      capacity=cap, headroom=head, metrics_age_s=age, **kw),  # type: ignore[arg-type]
        at,
    )  # fmt: skip
    return st


def test_stale_and_unknown_come_after_fresh_and_zero_ready_never() -> None:
    p = KvgatePolicy(ttl_s=2.0)
    stale = _state("stale", head=4.0, at=-5.0)  # idle, but its snapshot is 5 s old
    frozen = _state("frozen", head=4.0, age=10.0)  # fresh fetch, but its metrics stopped
    dead = _state("dead", ready=0, cap=0.0, head=0.0)
    never = ClusterState(ClusterSpec("never", gateway="never:80"))
    busy = _state("busy", head=0.5)
    order = [c.name for c in p.order([stale, frozen, dead, never, busy], ClusterRequest(), 0.0)]
    assert order[0] == "busy"
    assert "dead" not in order
    assert set(order[1:]) == {"stale", "frozen", "never"}


def test_llmd_hub_treats_unknown_as_idle_and_has_no_ttl() -> None:
    stale = _state("stale", kv=0.0, at=-100.0)
    fresh = _state("fresh", kv=0.3)
    assert LlmdHub().order([fresh, stale], ClusterRequest(), 0.0)[0].name == "stale"


def test_capacity_weighted_spread_and_no_herding_between_two_gateways() -> None:
    """Two gateways on one snapshot: each counts what it sent, so together they fill the clusters in
    proportion to headroom instead of both sending everything to the best-looking one. (Endpoints of one
    speed in both: a cluster of faster endpoints would rightly predict shorter TTFTs at equal load.)"""
    big = [_state("big", ready=8, cap=8.0, head=6.0), _state("small", ready=2, cap=2.0, head=1.5)]
    twin = [_state("big", ready=8, cap=8.0, head=6.0), _state("small", ready=2, cap=2.0, head=1.5)]
    g1, g2 = KvgatePolicy(rng=random.Random(1)), KvgatePolicy(rng=random.Random(2))
    sent: Counter[str] = Counter()
    for _ in range(200):
        for g, states in ((g1, big), (g2, twin)):
            c = g.order(states, ClusterRequest(), 0.0)[0]
            c.dispatched()
            sent[c.name] += 1
    share = sent["small"] / sum(sent.values())
    assert 0.1 < share < 0.35  # ~1.5 / 7.5 of the headroom
    hub: Counter[str] = Counter(LlmdHub().order(big, ClusterRequest(), 0.0)[0].name for _ in range(50))
    assert len(hub) == 1  # the baseline herds onto one cluster until the next snapshot


def test_prefers_local_then_spills_over() -> None:
    p = KvgatePolicy(local="home")
    home, away = _state("home", head=2.0), _state("away", head=2.0, rtt=40.0)
    first = [p.order([home, away], ClusterRequest(), 0.0)[0].name for _ in range(5)]
    assert first == ["home"] * 5
    home.sent_since_snapshot = 200  # full as far as this gateway knows
    assert p.order([home, away], ClusterRequest(), 0.0)[0].name == "away"


def test_prefix_affinity_from_bloom_summary() -> None:
    prompt = "system prompt of tenant seven " * 30
    bloom = build_bloom(block_hashes("m", prompt, 64))
    holder = _state("holder", head=1.6, prefix_bloom=bloom, prefix_chunk_chars=64)
    other = _state("other", head=2.0)
    p = KvgatePolicy(rng=random.Random(0), weights=KvgateWeights(home_bonus=0.0))  # Bloom alone
    req = ClusterRequest("m", prompt + "question")
    assert all(p.order([holder, other], req, 0.0)[0].name == "holder" for _ in range(10))
    # a different prompt goes by load
    assert p.order([holder, other], ClusterRequest("m", "unrelated " * 50), 0.0)[0].name == "other"


def test_active_passive_and_round_robin() -> None:
    a, b = _state("a"), _state("b")
    a.spec = ClusterSpec("a", gateway="a:80", priority=0)
    b.spec = ClusterSpec("b", gateway="b:80", priority=1)
    ap = make_policy("active-passive")
    assert ap.order([b, a], ClusterRequest(), 0.0)[0].name == "a"
    a.healthy = False
    assert ap.order([b, a], ClusterRequest(), 0.0)[0].name == "b"
    rr = make_policy("round-robin")
    assert [rr.order([a, b], ClusterRequest(), 0.0)[0].name for _ in range(4)] == ["a", "b", "a", "b"]
    with pytest.raises(ValueError):
        make_policy("nope")


def test_clusters_file_errors_and_hot_reload(tmp_path: Path) -> None:
    with pytest.raises(ClustersError, match="clusters"):
        parse({"clusters": []})
    with pytest.raises(ClustersError, match="gateway"):
        parse({"clusters": [{"name": "a"}]})
    with pytest.raises(ClustersError, match="local"):
        parse({"local": "z", "clusters": [{"name": "a", "gateway": "h:1"}]})
    f = tmp_path / "c.yaml"
    f.write_text("clusters: [{name: a, gateway: 'h:1'}]\n")
    seen: list[int] = []
    cf = ClustersFile(f, check_every_s=0.0, on_change=lambda c: seen.append(len(c.clusters)))
    f.write_text("clusters: [{name: a, gateway: 'h:1'}, {name: b, epp: 'h:2', rtt_ms: 30}]\n")
    import os

    os.utime(f, (1e9, 1e9))
    assert cf.maybe_reload(1.0) and seen == [2]
    assert cf.config.clusters[1].endpoint_mode and cf.config.clusters[1].rtt_ms == 30
    f.write_text("clusters: {broken")
    os.utime(f, (2e9, 2e9))
    assert not cf.maybe_reload(2.0) and len(cf.config.clusters) == 2  # last good list kept


def test_observed_ttft_steers_away_and_the_floor_does_not_fade() -> None:
    """A cluster whose GPU table overstates its speed shows up in the TTFT this gateway observes there;
    its TTFT floor (its measured speed) does not fade when it is left alone."""
    p = KvgatePolicy(rng=random.Random(0))
    slow, fast = _state("slow", head=3.0), _state("fast", head=2.0)
    assert p.order([slow, fast], ClusterRequest(), 0.0)[0].name == "slow"  # more headroom on paper
    fast.observe_ttft(0.1, 0.0)
    for _ in range(20):
        slow.observe_ttft(1.5, 0.0)
    assert all(p.order([slow, fast], ClusterRequest(), 0.0)[0].name == "fast" for _ in range(10))
    # 30 s later, unobserved: still as slow (its floor is 1.5 s), so still avoided
    assert slow.observed_ttft(30.0) == pytest.approx(1.5)
    slow.fetched_at = fast.fetched_at = 30.0  # fresh snapshots
    assert all(p.order([slow, fast], ClusterRequest(), 30.0)[0].name == "fast" for _ in range(10))


def test_recent_slowness_fades_to_the_model() -> None:
    """Answers slower than the model predicted (a queue it did not see) scale the cluster's predicted
    TTFT up, fading with their age, down to the model: a cluster left alone because it was loaded gets
    tried again; one that is slow per se keeps its floor (its measured speed), which does not fade."""
    p = KvgatePolicy(rng=random.Random(0))
    st = _state("c")
    for _ in range(30):
        st.observe_ttft(0.1, 0.0)
    req = ClusterRequest()
    p.order([st], req, 1.0)
    model = p.model_ttft(st)
    for _ in range(10):
        st.observe_ttft(20 * model, 1.0, st.dispatched(1.0, req.model_load["c"]))
    assert p.predicted_ttft(st, 1.0) > 3 * model  # (each answer's error clamped to 8x)
    assert st.ttft_floor_s is not None and st.ttft_floor_s < 0.2  # a few slow answers barely move it
    assert p.predicted_ttft(st, 60.0) == pytest.approx(p.model_ttft(st), rel=1e-3)
    assert st.observed_ttft(60.0) == pytest.approx(st.ttft_floor_s)


def test_requests_waiting_there_raise_a_slow_clusters_evidence() -> None:
    """A new request queues behind this gateway's requests still waiting for their first byte there
    (prefills one after the other on each ready endpoint): the evidence is at least the floor times that
    queue, so a burst into a slow cluster gets dearer with each request before any of them answers."""
    p = KvgatePolicy(rng=random.Random(0))
    slow = _state("slow", ready=1, cap=0.5, head=0.5, request_slots=8.0, rtt=80.0)
    fast = _state("fast", ready=3, cap=3.0, head=0.0, request_slots=24.0, q=1.0)  # full, a short queue
    for _ in range(20):
        slow.observe_ttft(4.0, 0.0)
        fast.observe_ttft(1.0, 0.0)
    assert slow.observed_ttft(0.0) == pytest.approx(4.0)
    costs = []
    for _ in range(3):
        p.order([slow, fast], ClusterRequest(), 0.0)
        costs.append(p.last_costs["slow"])
        slow.dispatched(0.0)
    assert slow.observed_ttft(0.0) == pytest.approx(4.0 * (1 + 3 / 1))
    assert costs[0] < costs[1] < costs[2]


def test_ttft_floor_tracks_a_low_quantile() -> None:
    rnd = random.Random(1)
    st = _state("c")
    xs = [rnd.uniform(1.0, 11.0) for _ in range(2000)]
    for x in xs:
        st.observe_ttft(x, 0.0)
    assert st.ttft_floor_s is not None and 1.0 < st.ttft_floor_s < 3.5  # near the 10th percentile (2.0)


def test_silent_cluster_becomes_expensive_as_its_outstanding_requests_age() -> None:
    """Censored TTFT evidence: a cluster that has not answered yet is not free. Requests waiting there for
    their first byte count at their age (a lower bound of their TTFT), so its cost rises while it
    swallows them, and falls back once they are answered or finished."""
    p = KvgatePolicy(rng=random.Random(0))
    answers, silent = _state("answers", head=2.0), _state("silent", head=3.0)  # silent: more headroom
    answers.observe_ttft(1.5, 0.0)  # a slow fleet: 1.5 s is the best TTFT seen
    tokens = [silent.dispatched(0.0) for _ in range(3)]
    silent.sent_since_snapshot = 0  # the snapshot already shows them: only the waiting matters here
    costs = []
    for now in (0.5, 3.0, 6.0, 12.0):
        answers.fetched_at = silent.fetched_at = now  # fresh snapshots all along
        p.order([answers, silent], ClusterRequest(), now)
        costs.append(p.last_costs["silent"])
    assert costs[0] < p.last_costs["answers"]  # a 0.5 s wait says nothing yet: it looks best on headroom
    # waiting 3 s, 2x the best answer seen: its predicted TTFT is at least that wait
    assert p.predicted_ttft(silent, 3.0) == pytest.approx(3.0)
    assert costs[1] == pytest.approx(3.0)
    assert costs[1] < costs[2] < costs[3]  # rises with the oldest wait
    assert all(p.order([answers, silent], ClusterRequest(), 12.0)[0].name == "answers" for _ in range(10))
    assert silent.oldest_wait(12.0) == 12.0
    for t in tokens:
        silent.finished(t)
    assert silent.waiting == {} and silent.oldest_wait(12.0) == 0.0
    # untracked (non-streamed) dispatches never wait for a first byte
    silent.dispatched()  # (its token is for ``finished`` alone)
    assert silent.waiting == {}


def test_answer_replaces_the_censored_wait() -> None:
    st = _state("c")
    tok = st.dispatched(0.0)
    assert st.observed_ttft(4.0) == 4.0  # nothing answered: the wait is the evidence
    st.observe_ttft(4.0, 4.0, tok)
    assert st.waiting == {} and st.observed_ttft(4.0) == pytest.approx(4.0)


def test_full_cluster_with_a_longer_queue_costs_more() -> None:
    """Headroom stops at zero, so past full the queue length from the snapshot keeps the cost rising."""
    p = KvgatePolicy()
    short, long_ = _state("short", head=0.0, q=2.0), _state("long", head=0.0, q=20.0)
    assert p.cost(long_, ClusterRequest()) > p.cost(short, ClusterRequest())
    assert p.order([long_, short], ClusterRequest(), 0.0)[0].name == "short"
    # below full the headroom already counts the queue: no double counting while there is room
    roomy = _state("roomy", head=2.0, q=2.0)
    assert p.utilisation(roomy) == pytest.approx((4.0 - 2.0 + 1 / 64) / 4.0)
    # what this gateway sent since the snapshot adds on top of the queue
    before = p.cost(long_, ClusterRequest())
    long_.dispatched()
    assert p.cost(long_, ClusterRequest()) > before


def test_ttft_term_is_scale_free() -> None:
    """Every cluster is costed in seconds of predicted TTFT, so the same TTFT ratios give the same cost
    ratios whether the fleet answers in tens of ms or in seconds: the relative discounts (local, prefix
    affinity, home) weigh the same at either scale."""
    ratios = []
    for scale in (0.05, 2.0):
        p = KvgatePolicy(weights=KvgateWeights(home_bonus=0.0))
        a, b = _state("a"), _state("b")
        a.observe_ttft(1.0 * scale, 0.0)
        b.observe_ttft(4.0 * scale, 0.0)
        p.order([a, b], ClusterRequest(), 0.0)
        assert p.base_ttft(b) == pytest.approx(4.0 * scale)  # the floor: its measured speed
        ratios.append(p.last_costs["b"] / p.last_costs["a"])
    assert ratios[0] == pytest.approx(ratios[1]) and ratios[0] == pytest.approx(4.0)


def test_occupancy_counts_requests_against_the_slots_the_cluster_reports() -> None:
    """A cluster whose KV caches hold 8 requests is full after 8, however its capacity is weighted; a
    snapshot without ``request_slots`` keeps the old per-request share (1/64 of a speed-1 endpoint)."""
    p = KvgatePolicy()
    small = _state("small", ready=1, cap=0.5, head=0.5, request_slots=8.0)
    assert p.utilisation(small) == pytest.approx(1 / 8)
    for _ in range(3):
        small.dispatched()
    assert p.utilisation(small) == pytest.approx(4 / 8)
    big = _state("big", ready=1, cap=0.5, head=0.5)
    assert p.utilisation(big) == pytest.approx((1 / 64) / 0.5)
    # a snapshot's queue past full counts in the same units
    full = _state("full", ready=1, cap=1.0, head=0.0, q=4.0, request_slots=8.0)
    assert p.utilisation(full) == pytest.approx(1.0 + 4 / 8 + 1 / 8)


def test_full_fast_cluster_against_an_idle_one_26_times_slower() -> None:
    """Pins the one-unit cost (every cluster's predicted TTFT in seconds). The live fleet's loss phase:
    the local east (3 replicas x 8 slots, 5 ms) full with requests queued past full, eu (1 replica, 80 ms)
    idle with a TTFT floor 26x east's. The cost before (max(occupancy, TTFT load 1 - 1/k) + 2 x RTT s)
    put eu at 1 - 1/26 + 0.16 = 1.12 and east at 1 + n/24 + 0.01: eu from the third request past full
    on (each one then took 7-20 s live). In seconds, east there waits its floor x (2 + n / 3): it stays
    the choice until that reaches eu's 26 floors (n ~ 80), and eu only then."""
    p = KvgatePolicy(local="east", rng=random.Random(0))
    east = _state("east", ready=3, cap=3.0, head=0.0, request_slots=24.0, rtt=5.0)  # full, nothing queued
    eu = _state("eu", ready=1, cap=0.5, head=0.5, request_slots=8.0, rtt=80.0)  # idle
    east.observe_ttft(0.265, 0.0)
    eu.observe_ttft(26 * 0.265, 0.0)
    for _ in range(3):  # the old cost's switch point
        east.dispatched()
    assert p.utilisation(east) == pytest.approx(1 + 4 / 24)
    assert all(p.order([eu, east], ClusterRequest(), 0.0)[0].name == "east" for _ in range(10))
    # the predicted TTFTs, in seconds: east its floor x (1 + 1 + 4 requests past full / 3 endpoints)
    assert p.predicted_ttft(east) == pytest.approx(0.265 * (2 + 4 / 3))
    assert p.predicted_ttft(eu) == pytest.approx(26 * 0.265 * (1 + 1 / 8))
    # the old cost, for the record: it preferred eu here
    old_east, old_eu = 1 + 4 / 24 + 2 * 0.005, (1 - 1 / 26) + 2 * 0.08
    assert old_eu < old_east
    # deep past full (east's predicted TTFT beyond eu's, local bonus included): eu
    for _ in range(90):
        east.dispatched()
    assert p.predicted_ttft(east) > p.predicted_ttft(eu) / (1 - p.w.local_bonus)
    assert p.order([eu, east], ClusterRequest(), 0.0)[0].name == "eu"


def test_past_full_each_queued_request_costs_a_prefill_per_endpoint() -> None:
    """Below full a cluster's predicted TTFT grows mildly with its occupancy (floor x (1 + u)); past full
    each request ahead adds one floor over the ready endpoints (they admit the queue one prefill after
    another), so a full cluster with a queue is dearer than one just full, and an idle slow cluster
    wins once the queue is long enough."""
    p = KvgatePolicy()
    c = _state("c", ready=2, cap=2.0, head=2.0, request_slots=16.0)
    c.observe_ttft(0.5, 0.0)
    assert p.predicted_ttft(c) == pytest.approx(0.5 * (1 + 1 / 16))
    full = _state("full", ready=2, cap=2.0, head=0.0, q=3.0, request_slots=16.0)  # 6 queued past full
    full.observe_ttft(0.5, 0.0)
    assert p.utilisation(full) == pytest.approx(1 + 7 / 16)
    assert p.predicted_ttft(full) == pytest.approx(0.5 * (2 + 7 / 2))
    slow = _state("slow", ready=1, cap=1.0, head=1.0, request_slots=8.0)
    slow.observe_ttft(2.0, 0.0)  # 4x the floor, idle: 2 x (1 + 1/8) = 2.25 s < 2.75 s
    assert p.order([full, slow], ClusterRequest(), 0.0)[0].name == "slow"


def test_prefix_home_partitions_tenants_and_moves_only_a_lost_clusters() -> None:
    """Weighted rendezvous hashing of the request's leading blocks: every gateway computes the same home,
    tenants are spread in proportion to what each cluster serves (its slots over its slot time), a
    tenant stays at home while it is not much dearer there (the home discount), and a cluster's loss
    moves only its own tenants."""

    def fleet() -> list[ClusterState]:
        east = _state("east", ready=3, cap=3.0, head=3.0, request_slots=24.0, rtt=5.0)
        west = _state("west", ready=2, cap=2.8, head=2.8, request_slots=16.0, rtt=40.0)
        eu = _state("eu", ready=1, cap=0.5, head=0.5, request_slots=8.0, rtt=80.0)
        for st, floor in ((east, 0.265), (west, 0.343), (eu, 6.9)):
            st.observe_ttft(floor, 0.0)
        return [east, west, eu]

    tenants = [ClusterRequest("m", f"tenant {t:03d} system prompt. " * 40 + "question?") for t in range(300)]
    g1 = KvgatePolicy(local="east", rng=random.Random(1))
    g2 = KvgatePolicy(local="east", rng=random.Random(2))
    f1, f2 = fleet(), fleet()
    homes = [g1.home(f1, r) for r in tenants]
    assert homes == [g2.home(f2, r) for r in tenants]  # two gateways agree without talking
    share = Counter(homes)
    # weights = throughput, slots / slot time; before any decode is measured the slot time is slots /
    # ready x the floor, so 3 / 0.265 : 2 / 0.343 : 1 / 6.9 = 0.65 : 0.34 : 0.01
    assert 0.55 < share["east"] / 300 < 0.75 and 0.25 < share["west"] / 300 < 0.45 and share["eu"] < 10
    # idle fleet: every tenant is served at its home (eu's homes, a handful, go by cost)
    picks = [g1.order(f1, r, 0.0)[0].name for r in tenants]
    assert all(p == h for p, h in zip(picks, homes, strict=True) if h != "eu")
    # measured decode times set the weights: west's requests holding their slots 3x longer than
    # east's halves its share (24 / 6 : 16 / 18 = 0.82 : 0.18)
    f3 = fleet()
    f3[0].decode_s, f3[1].decode_s = 6.0 - 0.265, 18.0 - 0.343
    share3 = Counter(g1.home(f3, r) for r in tenants)
    assert 0.1 < share3["west"] / 300 < 0.27 and share3["east"] / 300 > 0.7
    # west lost: only west's tenants move
    survivors = [c for c in f1 if c.name != "west"]
    moved = [h for h, r in zip(homes, tenants, strict=True) if g1.home(survivors, r) != h]
    assert set(moved) == {"west"} and len(moved) == share["west"]


def test_policy_seed_given_or_drawn() -> None:
    """A given seed repeats the kvgate policy's random picks; none draws one from os.urandom, so two
    gateways built alike do not pick alike (identical picks are the worst case for herding)."""

    def picks(seed: int | None) -> list[str]:
        p = make_policy("kvgate", seed=seed)
        states = [_state(n) for n in "abcd"]  # all alike: every pick is power of two at random
        return [p.order(states, ClusterRequest(), 0.0)[0].name for _ in range(40)]

    assert picks(5) == picks(5)
    assert picks(None) != picks(None)  # 40 picks among 4 alike: equal by chance with odds ~1e-14


def test_queue_past_full_waits_for_slots_at_the_measured_turnover() -> None:
    """Past full, a request waits for a slot: the queue ahead, (u - 1) x slots, drains at slots / (idle
    TTFT + decode time) per second. The decode time is measured by this gateway (first byte to end of a
    streamed request), so a cluster whose requests hold their slots long spills over sooner."""
    p = KvgatePolicy()
    west = _state("west", ready=2, cap=2.0, head=0.0, q=1.0, request_slots=16.0)  # 2 queued past full
    west.observe_ttft(0.35, 0.0)
    assert p.slot_time(west) == pytest.approx(0.35 * 16 / 2)  # nothing decoded yet: a prefill per slot
    tok = west.dispatched(0.0)
    west.observe_ttft(0.35, 0.35, tok)
    west.finished(tok, 9.35)  # 9 s from the first byte to the end
    assert west.decode_s == pytest.approx(9.0) and west._first_at == {}
    west.sent_since_snapshot = 0
    u = p.utilisation(west)
    assert u == pytest.approx(1 + 3 / 16)
    assert p.predicted_ttft(west) == pytest.approx(0.35 * 2 + (3 / 16) * (0.35 + 9.0))
    # against an idle cluster 4x slower per request: the long turnover sends the request there
    east = _state("east", ready=3, cap=3.0, head=3.0, request_slots=24.0)
    east.observe_ttft(1.4, 0.0)
    assert p.order([west, east], ClusterRequest(), 0.0)[0].name == "east"
    # a request finished without its time (or never answered) teaches nothing
    west.finished(west.dispatched(0.0))
    assert west.decode_s == pytest.approx(9.0)


def test_prefix_home_is_the_tenants_not_the_questions_and_no_summary_rekeys_it() -> None:
    """The home key is the request's first 256 chars at a fixed chunk: one tenant with a 540-char system
    prompt (shorter than the 16 blocks the key once spanned) and 200 different questions has one home;
    and a cluster whose summary uses another chunk going stale moves only its own tenants."""

    def fleet() -> list[ClusterState]:
        out = []
        for name, chunk in (("a", 32), ("b", 64), ("c", 64)):  # "a", listed first, hashes 32-char blocks
            st = _state(name, request_slots=16.0, prefix_chunk_chars=chunk)
            st.observe_ttft(0.3, 0.0)
            out.append(st)
        return out

    p = KvgatePolicy(rng=random.Random(0))
    system = "You are the support assistant of tenant 7. Answer briefly and politely. " * 8  # 584 chars
    asks = [ClusterRequest("m", system[:540] + f"Question {i}: reset {i * 7919}? " * 8) for i in range(200)]
    assert len({p.home(fleet()[1:], r) for r in asks}) == 1  # (b and c: 64-char blocks)
    tenants = [ClusterRequest("m", f"tenant {t:03d} system prompt. " * 20 + "question?") for t in range(200)]
    f = fleet()
    homes = [p.home(f, r) for r in tenants]
    survivors = f[1:]  # "a" went stale: the policy homes among the usable ones only
    moved = [h for h, r in zip(homes, tenants, strict=True) if p.home(survivors, r) != h]
    assert set(moved) == {"a"} and len(moved) == homes.count("a") > 0
    # the same through order(): "a" stale by its snapshot's age, its tenants' homes are among b and c
    f[0].fetched_at = -100.0
    p.order(f, tenants[0], 0.0)
    assert p.last_home == p.home(survivors, tenants[0])


def test_two_gateways_with_different_rtts_and_measurements_agree_on_homes() -> None:
    """Each gateway measures the clusters itself: another RTT to each (its TTFT floors include it) and
    decode times a few % apart. Home weights leave the RTT out and go by half-octave classes, so the two
    agree on every tenant's home, and a 5 % drift of one's measurements moves none. (Weights here sit
    inside their classes: east ~12 of 11.3 [9.5, 13.5), west ~5.2-5.4 of 5.7 [4.8, 6.7); a measurement
    crossing a class boundary still moves that cluster's marginal tenants.)"""

    def fleet(
        rtt: tuple[float, float], floor: tuple[float, float], decode: tuple[float, float]
    ) -> list[ClusterState]:
        east = _state("east", ready=3, cap=3.0, head=3.0, request_slots=24.0, rtt=rtt[0])
        west = _state("west", ready=2, cap=2.8, head=2.8, request_slots=16.0, rtt=rtt[1])
        for st, f, d in ((east, floor[0], decode[0]), (west, floor[1], decode[1])):
            st.observe_ttft(f, 0.0)
            st.decode_s = d
        return [east, west]

    tenants = [ClusterRequest("m", f"tenant {t:03d} system prompt. " * 20 + "question?") for t in range(300)]
    p = KvgatePolicy()
    # gateway 1 is 5 ms from east and 40 ms from west; gateway 2 the other way round (45 / 5 ms)
    g1 = fleet((5.0, 40.0), (0.265, 0.343), (1.70, 2.80))
    g2 = fleet((45.0, 5.0), (0.306, 0.300), (1.78, 2.65))
    homes = [p.home(g1, r) for r in tenants]
    assert 0.2 < homes.count("west") / 300 < 0.5  # both clusters are homes
    assert homes == [p.home(g2, r) for r in tenants]
    drift = fleet((5.0, 40.0), (0.265 * 1.05, 0.343 / 1.05), (1.70 * 1.05, 2.80 / 1.05))
    assert homes == [p.home(drift, r) for r in tenants]


def test_a_drained_cluster_is_not_judged_by_the_queue_its_last_answers_met() -> None:
    """Live loss phase: east overloaded answers in ~4 s; then `west` is back, east drains (its fresh
    snapshot shows room) and gets nothing more, so no new answer comes from it. A TTFT describes the queue
    when its request was sent: judged by those answers east looked 4 s away for seconds after it had
    drained, and every tenant went into the cold, restarted `west` (5-7 s there). The evidence is the
    model's error instead (observed over predicted at dispatch), applied to the model at the current
    snapshot: a model that was right about the old queue is trusted about the new one."""
    p = KvgatePolicy(local="east", rng=random.Random(0))
    east = _state("east", ready=3, cap=3.0, head=0.0, q=4.0, request_slots=24.0, rtt=5.0)
    for _ in range(10):
        east.observe_ttft(0.27, 0.0)  # its floor
    req = ClusterRequest()
    t = 1.0
    last = 0.0
    for _ in range(20):  # overloaded: each answer about what the model predicted when it was sent
        east.fetched_at = t
        p.order([east], req, t)
        last = 1.1 * p.model_ttft(east)
        tok = east.dispatched(t, req.model_load["east"])
        east.observe_ttft(last, t + last, tok)
        t += 0.2
    assert last > 2.0 and p.predicted_ttft(east, t) > 2.0  # still loaded: still dear
    # drained: a fresh snapshot with room, and nothing sent since
    drained_snapshot = PoolAggregate(
        "east", 99.0, 3, 3, average_kv_cache_utilization=0.4, capacity=3.0, headroom=1.5, request_slots=24.0
    )
    east.set_aggregate(drained_snapshot, t + 0.5)
    drained = p.predicted_ttft(east, t + 0.5)
    # the model now (floor x (1 + u)) times at most the 10 % error seen: not the 2 s its last answers took
    assert drained == pytest.approx(p.model_ttft(east) * east.model_bias(t + 0.5))
    assert east.model_bias(t + 0.5) <= 1.1 and drained < 0.4 * last


def test_a_model_that_underestimates_a_cluster_is_corrected_by_its_answers() -> None:
    """The other side: a snapshot that says idle where requests wait long (a restarted cluster's slot
    prior, cold caches) makes answers slower than predicted; the cluster's predicted TTFT is scaled up by
    that error (fading with its age), so it is not flooded while its snapshot looks empty."""
    p = KvgatePolicy(rng=random.Random(0))
    west = _state("west", ready=2, cap=2.8, head=2.8, kv=0.0)  # no request_slots: the 64-per-endpoint prior
    west.observe_ttft(0.35, 0.0)
    model = p.model_ttft(west)
    for _ in range(10):
        req = ClusterRequest()
        p.order([west], req, 1.0)
        tok = west.dispatched(1.0, req.model_load["west"])
        west.observe_ttft(5 * model, 2.0, tok)
    assert west.model_bias(2.0) > 2.5
    assert p.predicted_ttft(west, 2.0) > 2.5 * model
    assert p.predicted_ttft(west, 60.0) == pytest.approx(p.model_ttft(west), rel=1e-3)  # it fades
    # answers with no prediction recorded (dispatched without an order) are no evidence of the model's
    west2 = _state("west2")
    west2.observe_ttft(0.3, 0.0)
    west2.observe_ttft(9.0, 1.0, west2.dispatched(0.5))
    assert west2.model_bias(1.0) == 1.0


def test_the_first_answer_replaces_the_speed_prior_and_is_no_model_error() -> None:
    """Before any answer the model is the speed prior (50 ms over the snapshot's speed, plus the RTT):
    the first answer sets the cluster's floor instead, so a prior far off (an A100 cluster 26x slower)
    leaves no error to scale the model by once the floor is measured."""
    p = KvgatePolicy(rng=random.Random(0))
    eu = _state("eu", ready=1, cap=0.5, head=0.5, request_slots=8.0, rtt=80.0)
    req = ClusterRequest()
    p.order([eu], req, 0.0)
    assert "eu" not in req.model_load  # no floor yet: nothing to hold the answer against
    eu.observe_ttft(6.9, 6.9, eu.dispatched(0.0, req.model_load.get("eu")))
    assert eu.ttft_floor_s == 6.9 and eu.model_bias(6.9) == 1.0
    eu.fetched_at = 7.0  # a fresh snapshot
    req = ClusterRequest()
    p.order([eu], req, 7.0)
    # measured now: the next answer is evidence
    assert req.model_load["eu"] * eu.ttft_floor_s == pytest.approx(p.model_ttft(eu))
