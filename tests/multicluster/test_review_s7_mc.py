"""Review s7-mc (fails first on 5be8d28 / f8e2584): the miss cost learnt at the idle scale and floored,
first sends counted only once answered, slow start opened by non-streamed answers, the live trace order."""

from __future__ import annotations

import random

import pytest

from kvgate.datalayer.aggregate import PoolAggregate, build_bloom
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy, KvgateWeights
from kvgate.multicluster.state import ClusterState, DispatchNote
from kvgate.scheduling.prefix import block_hashes

TENANT = "system prompt of tenant seven, long and shared by every request of it " * 8


def _state(name: str, *, ready: int = 2, head: float = 2.0, bloom: object = None) -> ClusterState:
    st = ClusterState(ClusterSpec(name, gateway=f"{name}:80"))
    st.set_aggregate(
        PoolAggregate(name, 1.0, ready, ready, capacity=2.0, headroom=head, request_slots=16.0,
                      prefix_bloom=bloom, prefix_chunk_chars=64 if bloom is not None else None),  # type: ignore[arg-type]
        0.0,
    )  # fmt: skip
    return st


def test_misses_measured_quiet_and_hits_measured_busy_do_not_make_a_miss_free() -> None:
    """The miss median and the hit median are taken at different loads: sure misses are mostly first
    sends (a tenant's first requests: warm-up, a quiet cluster), sure hits come later under load. Live
    figures: a miss costs ~1 s over a 0.3 s hit at the same load. Here every miss was answered idle
    (1.3 s at a model load of 1), every hit busy (0.3 s prefill x a queue: 1.5 s at a model load of 5).
    The learnt miss cost is max(0, 1.3 - 1.5) = 0, so ``cost`` drops the Bloom discount (measured) and
    ``miss_ttft`` adds 0: the cluster holding the tenant's prefix is no cheaper than one without it."""
    st = _state("a")
    st.observe_ttft(0.3, 0.0)
    for i in range(10):  # quiet: the tenants' first sends
        tok = st.dispatched(0.0, note=DispatchNote(load=1.0, cached=0.0, key=f"tenant{i}".encode()))
        st.observe_ttft(1.3, 1.0, tok)
        st.finished(tok)
    for _ in range(10):  # busy: their repeats, in the summary
        tok = st.dispatched(1.0, note=DispatchNote(load=5.0, cached=1.0, key=b"tenant0"))
        st.observe_ttft(1.5, 2.5, tok)
        st.finished(tok)
    assert st.miss_cost_s is not None
    assert st.miss_cost_s > 0.3  # a miss is ~1 s of prefill here whatever the queue


def test_a_measured_miss_cost_of_zero_turns_prefix_affinity_off() -> None:
    """Two clusters alike but for the Bloom summary: before any measurement the warm one is cheaper
    (the relative Bloom discount). Once the warm cluster's miss cost reads 0 (learnt as above), both
    cost the same: the tenant's prefix no longer counts at all."""
    bloom = build_bloom(block_hashes("m", TENANT, 64))
    p = KvgatePolicy(rng=random.Random(0), weights=KvgateWeights(home_bonus=0.0, local_bonus=0.0))
    warm, cold = _state("warm", bloom=bloom), _state("cold", bloom=build_bloom([1, 2, 3]))
    for st in (warm, cold):
        st.observe_ttft(0.3, 0.0)
    req = ClusterRequest("m", TENANT + "question")
    p.order([warm, cold], req, 0.0)
    assert p.last_costs["warm"] < p.last_costs["cold"]  # before: the prefix counts
    warm.hit_ttft_s, warm.miss_ttft_s = 1.5, 1.3  # learnt as in the test above: miss_cost_s == 0
    cold.hit_ttft_s, cold.miss_ttft_s = 1.5, 1.3
    req = ClusterRequest("m", TENANT + "question")
    p.order([warm, cold], req, 0.0)
    assert p.last_costs["warm"] < p.last_costs["cold"]  # fails: equal, the prefix no longer counts


def test_a_send_that_never_reached_the_cluster_is_not_its_first_send() -> None:
    """The router's attempt that fails to connect (or gets a 5xx / 429, or falls back to the Parent)
    calls ``dispatched`` with the note, which records the prefix as sent there. The send that does
    reach the cluster next is then no 'first send': the one sure miss of that tenant is lost (and the
    same for a non-streamed first send, which is never answered with a TTFT)."""
    st = _state("a")
    note = DispatchNote(cached=0.0, key=b"tenant0")
    tok = st.dispatched(0.0, note=note)
    st.finished(tok)  # router._send's given_up(): unreachable
    tok = st.dispatched(1.0, note=note)  # the retry (the Parent, or a later request) reaches it
    st.observe_ttft(1.3, 2.3, tok)
    assert st.miss_n == 1


def test_a_slow_start_with_non_streamed_traffic_opens_its_window() -> None:
    """Non-streamed requests never give a TTFT, so their answers never open the window, and
    ``prefilling`` counts them for their whole decode: a returning cluster serving non-streamed
    clients stays at one request per ready endpoint for the whole RAMP_MAX_S (20 s), the f8e2584
    symptom (6 of 54 requests while the other cluster answered in 5.7 s) for non-streamed clients."""
    p = KvgatePolicy(rng=random.Random(0), weights=KvgateWeights(home_bonus=0.0, slack=0.0))
    east, west = _state("east", head=0.0), _state("west", head=2.0)  # east full
    for st in (east, west):
        st.observe_ttft(0.3, 0.0)
    p.order([east, west], ClusterRequest(), 0.0)
    west.fetched_at = -10.0
    p.order([east, west], ClusterRequest(), 0.0)
    west.fetched_at = east.fetched_at = 1.0
    t = 1.0
    for _ in range(10):  # ten non-streamed requests, each answered well within the model's time
        east.fetched_at = west.fetched_at = t
        req = ClusterRequest()
        assert p.order([east, west], req, t)[0].name == "west"
        west.dispatched(note=req.note("west"))  # not streamed: untracked
        west.finished(0, t + 0.5)
        t += 0.6
    assert west.ramp_window is not None
    assert west.ramp_window > 2.0  # fails: still 2 after ten answers on time
    # And two non-streamed requests decoding for seconds hold the whole window: the next goes to the
    # full east, as until RAMP_MAX_S.
    west.dispatched()
    west.dispatched()
    assert p.order([east, west], ClusterRequest(), t)[0].name == "west"


def test_live_trace_reads_requests_in_start_order_not_completion_order() -> None:
    """``open_loop`` appends each Result when its request ENDS (results.append(await _send(...))), so
    ``trace_kinds`` walks completion order: a tenant's first request (east, a slow 1.3 s miss, long
    decode) ending after its second (west, started 0.5 s later, ended first) is named the spill
    ('second@east') and the later one the tenant's 'first'."""
    from kvgate.bench.multicluster_live import Result, trace_kinds

    a = Result(10.0, "east", 1.3, group="g0", prompt_tokens=100, cached_tokens=0)
    b = Result(10.5, "west", 0.4, group="g0", prompt_tokens=100, cached_tokens=0)
    completion_order = [b, a]
    t = trace_kinds(completion_order, warmup=5.0, timeout=20.0)
    assert t["p90_set"] == {"first@east": 1}  # fails: {'second@east': 1}


def test_a_second_concurrent_first_send_and_an_error_reply_are_no_sure_miss() -> None:
    """Two sends of a new prefix in flight at once: only the first is a sure miss (the second may meet
    the first's prefill). An error reply (a 4xx first byte) prefilled nothing: the prefix is not sent."""
    st = _state("a")
    note = DispatchNote(cached=0.0, key=b"tenant0")
    one, two = st.dispatched(0.0, note=note), st.dispatched(0.0, note=note)
    st.observe_ttft(1.3, 1.3, one)
    st.observe_ttft(1.3, 1.3, two)
    assert st.miss_n == 1
    note = DispatchNote(cached=0.0, key=b"tenant1")
    tok = st.dispatched(2.0, note=note)
    st.answered_without_ttft(tok)
    st.finished(tok, 2.1)
    st.observe_ttft(1.3, 3.4, st.dispatched(2.1, note=note))
    assert st.miss_n == 2


def test_a_hub_request_that_failed_is_not_sent_there() -> None:
    """The hub EPP's non-streamed dispatch keeps its token: a failed one (ok=False) leaves its prefix
    unsent; an answered one records it."""
    from kvgate.multicluster.clusters import ClustersConfig
    from kvgate.multicluster.hub import ClusterDirector
    from kvgate.scheduling.types import InferenceRequest

    cfg = ClustersConfig(clusters=(ClusterSpec("a", gateway="a:80"),))
    d = ClusterDirector(cfg, "kvgate", clock=lambda: 0.0, seed=0)
    st = d.states["a"]
    st.set_aggregate(
        PoolAggregate("a", 1.0, 2, 2, capacity=2.0, headroom=2.0, request_slots=16.0,
                      prefix_bloom=build_bloom([1, 2, 3]), prefix_chunk_chars=64),
        0.0,
    )  # fmt: skip
    for ok in (False, True):
        req = InferenceRequest(request_id=f"r{ok}", model="m", prompt_text=TENANT + "q", stream=False)
        ep = d.pick(req).endpoints[0]
        d.on_dispatched(req, ep)
        assert st.sent_keys == {}
        d.on_finished(req, ep, None, ok)
    assert len(st.sent_keys) == 1 and st.inflight == 0


def test_two_gateways_classify_by_the_answers_cached_tokens_not_their_own_first_send() -> None:
    """Gateway 1 sends tenant T to cluster A; gateway 2's first send of T there, before the summary lists
    it, is answered at hit speed. By its own "first send" rule gateway 2 counts it a sure miss (pulling
    the miss median down); the answer's reported cached tokens say it was a hit."""
    gw1, gw2 = _state("a"), _state("a")  # two gateways' views of one cluster
    for st in (gw1, gw2):
        st.observe_ttft(0.3, 0.0)
    note = DispatchNote(load=1.0, cached=0.0, key=b"tenantT")
    tok = gw1.dispatched(0.0, note=note, usage=True)
    gw1.observe_ttft(1.3, 1.3, tok)
    gw1.finished(tok, 2.0, cached=0.02)  # a miss: its template header only
    assert (gw1.miss_n, gw1.hit_n) == (1, 0)
    tok = gw2.dispatched(0.3, note=note, usage=True)
    gw2.observe_ttft(0.3, 0.6, tok)
    gw2.finished(tok, 1.5, cached=0.9)  # a hit: gateway 1's send prefilled it
    assert (gw2.miss_n, gw2.hit_n) == (0, 1)
    # An answer that reports no cached tokens falls back to the prediction (this gateway's first send).
    note = DispatchNote(load=1.0, cached=0.0, key=b"tenantU")
    tok = gw2.dispatched(2.0, note=note, usage=True)
    gw2.observe_ttft(1.3, 3.3, tok)
    gw2.finished(tok, 4.0)
    assert (gw2.miss_n, gw2.hit_n) == (1, 1)


def test_the_hub_classifies_a_streamed_answer_by_its_reported_cached_tokens() -> None:
    from kvgate.multicluster.clusters import ClustersConfig
    from kvgate.multicluster.hub import ClusterDirector
    from kvgate.scheduling.types import InferenceRequest, Usage

    now = [0.0]
    cfg = ClustersConfig(clusters=(ClusterSpec("a", gateway="a:80"),))
    d = ClusterDirector(cfg, "kvgate", clock=lambda: now[0], seed=0)
    st = d.states["a"]
    st.set_aggregate(
        PoolAggregate("a", 1.0, 2, 2, capacity=2.0, headroom=2.0, request_slots=16.0,
                      prefix_bloom=build_bloom([1, 2, 3]), prefix_chunk_chars=64),
        0.0,
    )  # fmt: skip
    # This hub's first send of the tenant (a predicted sure miss), answered from the engine's cache.
    req = InferenceRequest(request_id="r", model="m", prompt_text=TENANT + "q", stream=True)
    ep = d.pick(req).endpoints[0]
    d.on_dispatched(req, ep)
    now[0] = 0.3
    d.on_first_token(req, ep)
    now[0] = 1.0
    d.on_finished(req, ep, Usage(100, 5, 90, cached_reported=True), True)
    assert (st.hit_n, st.miss_n) == (1, 0)


def _full_state(name: str, bloom: object) -> ClusterState:
    """A cluster past full: no headroom, a queue in the snapshot (u ~ 2)."""
    st = ClusterState(ClusterSpec(name, gateway=f"{name}:80"))
    st.set_aggregate(
        PoolAggregate(name, 1.0, 2, 2, capacity=2.0, headroom=0.0, request_slots=16.0,
                      average_queue_size=8.0, prefix_bloom=bloom, prefix_chunk_chars=64),  # type: ignore[arg-type]
        0.0,
    )  # fmt: skip
    return st


def test_a_miss_cost_learnt_past_full_is_not_divided_away_by_the_queue_wait() -> None:
    """The queue factor (``ClusterRequest.queue_load``) is model_ttft(c) / floor, and model_ttft past
    full is idle x 2 + (u - 1) x slot_time: an ADDITIVE wait. Dividing a TTFT by it does not take the
    wait out, it shrinks the miss part with it. Here the model is exact: a hit is answered at its
    predicted TTFT, a miss at the predicted TTFT plus its true 1 s prefill x (1 + min(u, 1)). At the idle
    scale the difference should be ~1 s; it comes out 0.22 s (then ``miss_cost`` floors it at
    affinity/(1-affinity) x floor = 0.1 s): a full home cluster spills its tenants for ~0.1-0.2 s, not the
    1 s each will redo elsewhere -- exactly when spill-over is decided. (Review s7-final-b A: the note
    keeps the wait apart, ``DispatchNote.wait``, and the answer less it is divided by the factor.)"""
    p = KvgatePolicy(rng=random.Random(0), weights=KvgateWeights(home_bonus=0.0, local_bonus=0.0))
    st = _full_state("a", build_bloom(block_hashes("m", TENANT, 64)))
    st.observe_ttft(0.3, 0.0)  # floor 0.3 s
    st.decode_s = 2.7  # slot time 3 s
    true_miss = 1.0
    for i in range(12):
        req = ClusterRequest("m", TENANT + f"q{i}")
        p.order([st], req, 1.0)
        q, wait = req.queue_load["a"], req.queue_wait["a"]
        assert wait > 0.0  # past full: a wait for a slot, added to the TTFT (kept apart from the factor)
        model = p.model_ttft(st)  # a hit's TTFT, as predicted (the model is right)
        u = p.utilisation(st)
        tok = st.dispatched(1.0, note=DispatchNote(load=q, cached=1.0, key=b"hot", queue=q, wait=wait))
        st.observe_ttft(model, 2.0, tok)
        st.finished(tok)
        miss = model + true_miss * (1.0 + min(u, 1.0))
        note = DispatchNote(load=q, cached=0.0, key=f"new{i}".encode(), queue=q, wait=wait)
        tok = st.dispatched(1.0, note=note)
        st.observe_ttft(miss, 2.0, tok)
        st.finished(tok)
        st.sent_since_snapshot = 0
    assert st.miss_cost_s is not None
    assert st.miss_cost_s == pytest.approx(true_miss, rel=0.3)  # was 0.217: the wait divided with the factor


async def test_a_non_streamed_error_reply_neither_sends_the_prefix_nor_opens_the_slow_start() -> None:
    """router.py settle() always calls ``st.finished(token, self.clock())``: for a non-streamed request
    (now tracked by a token in ``_plain``/``_keys``) that is an answer whatever its status, so a 400
    ("prompt too long") records the tenant's prefix as sent there (its one sure miss is gone, the
    s7-mc #3 case the streamed path handles with ``answered_without_ttft``) and opens a returning
    cluster's slow-start window by one, as a successful answer does. The hub passes ``ok`` (status 200)
    and gets this right. (Review s7-final-b B.)"""
    import time as _time

    import aiohttp
    import orjson

    from gateway.backend import Backend
    from kvgate.multicluster.clusters import ClustersConfig
    from kvgate.multicluster.serve import GlobalGateway

    b = Backend("gw1")
    await b.start()
    b.mode = "error400"
    gw = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=b.address),)), "kvgate", fetch=False, seed=0)
    await gw.start("127.0.0.1", 0)
    st = gw.router.states["c"]
    try:
        st.set_aggregate(
            PoolAggregate("c", 1.0, 1, 1, capacity=1.0, headroom=1.0, request_slots=8.0,
                          prefix_bloom=build_bloom([1, 2, 3]), prefix_chunk_chars=64),
            _time.monotonic(),
        )  # fmt: skip
        st.ramp_window, st.ramp_until = 1.0, _time.monotonic() + 60.0
        body = {"model": "m", "prompt": TENANT + "q", "max_tokens": 4}
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(body)) as r:
            assert r.status == 400
            await r.read()
        assert st.inflight == 0
        assert st.sent_keys == {}  # was: the 400's prefix recorded as sent
        assert st.ramp_window == 1.0  # was: the error opened it to 2.0
    finally:
        await gw.stop()
        await b.stop()
