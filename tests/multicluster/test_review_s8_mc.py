"""Review s8-mc (multi-cluster policy, session 8; each fails first on d6756e7): a first hit slower than the
floor does not raise it (B1, both the prediction and the reported-usage path), reading /v1/clusters does
not change routing (B2), a floor under its configured RTT does not collapse the prior's unit (R1), a
returning cluster learns its hits' floor again (R2), /readyz orders nothing (N1), a prior of 0 is refused
(N2)."""

from __future__ import annotations

import random

import pytest

from fake_time import FakeTime
from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy, KvgateWeights
from kvgate.multicluster.router import GlobalRouter
from kvgate.multicluster.serve import GlobalGateway
from kvgate.multicluster.state import ClusterState, DispatchNote

TENANTS = [ClusterRequest("m", f"tenant {t:03d} system prompt. " * 20 + "question?") for t in range(300)]


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


# --- B2 -------------------------------------------------------------------------------------------------


def _router(now: list[float]) -> GlobalRouter:
    cfg = ClustersConfig(
        (
            ClusterSpec("east", gateway="east:80", rtt_ms=5.0),
            ClusterSpec("west", gateway="west:80", rtt_ms=40.0),
        ),
        ttl_s=5.0,
    )
    r = GlobalRouter(cfg, "kvgate", clock=lambda: now[0], seed=0)
    for name, ready, cap, slots in (("east", 3, 3.0, 24.0), ("west", 2, 2.8, 16.0)):
        r.states[name].set_aggregate(
            PoolAggregate(name, 1.0, ready, ready, capacity=cap, headroom=cap, request_slots=slots), now[0]
        )
    for name, floor, decode in (("east", 0.265, 3.0), ("west", 0.33, 2.2)):
        st = r.states[name]
        st.observe_ttft(floor, now[0], st.dispatched(now[0] - floor))
        st.finished(1, now[0])
        st.decode_s = decode
    return r


def _homes(r: GlobalRouter) -> list[str | None]:
    out = []
    for t in TENANTS:
        r.order(ClusterRequest(t.model, t.prompt))
        out.append(r.policy.last_home)  # type: ignore[attr-defined]
    return out


def test_reading_v1_clusters_does_not_change_where_requests_go() -> None:
    """``summary`` (GET /v1/clusters, polled every second by the live bench) reported ``home_weight``,
    which held the class it computed: a read while east's decode time was at 4.4 s moved east's class
    (6 -> 5), held at 3.4 s after, and two otherwise identical gateways then homed tenants differently."""
    now = [10.0]
    quiet, polled = _router(now), _router(now)
    assert _homes(quiet) == _homes(polled)
    for r in (quiet, polled):
        r.states["east"].decode_s = 4.4
    summary = {c["name"]: c for c in polled.summary()}  # a GET /v1/clusters between two requests
    assert summary["east"]["home_weight"] == pytest.approx(2.0**2.5)  # the class a request would use now
    for r in (quiet, polled):
        r.states["east"].decode_s = 3.4
    assert _homes(polled) == _homes(quiet)


# --- R1 -------------------------------------------------------------------------------------------------


def test_a_floor_under_its_configured_rtt_does_not_make_an_unanswered_cluster_look_free() -> None:
    """``rtt_ms`` is configured, not measured. A floor under it was clamped at 1e-6 s of prefill in
    ``calibrate_prior`` (1e-3 in ``home_weight``): its ratio to its prior, ~1e-5, collapsed the geometric
    mean and an unanswered cluster was costed at about its RTT alone."""
    p = KvgatePolicy(local="east", rng=random.Random(0))

    def state(name: str, ready: int, speed: float, rtt: float) -> ClusterState:
        st = ClusterState(ClusterSpec(name, gateway=f"{name}:80", rtt_ms=rtt))
        st.set_aggregate(
            PoolAggregate(name, 1.0, ready, ready, capacity=ready * speed, headroom=ready * speed,
                          request_slots=8.0 * ready),
            0.0,
        )  # fmt: skip
        return st

    east, west, eu = fleet = [
        state("east", 3, 1.0, 5.0),
        state("west", 2, 1.4, 60.0),
        state("eu", 1, 0.5, 80.0),
    ]
    east.observe_ttft(0.30, 1.0, east.dispatched(0.0))
    west.observe_ttft(0.055, 1.0, west.dispatched(0.0))  # 5 ms under its configured 60 ms RTT
    p.order(fleet, ClusterRequest(), 1.0)
    # eu is 2x slower per endpoint than east by its labels: its prefill should not cost < 1/10 of east's.
    assert p.base_ttft(eu) - 0.08 > (p.base_ttft(east) - 0.005) / 10, (p.prior_scale, p.base_ttft(eu))


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


# --- N1 -------------------------------------------------------------------------------------------------


async def test_readyz_is_not_a_routing_decision() -> None:
    """``/readyz`` ran ``router.order(ClusterRequest())``: every readiness probe counted as a request
    ordered to the best cluster in the policy's trace (``first_to``) and drew from its rng."""
    ft = FakeTime(10.0)  # (one time: a clock comes with its sleep)
    cfg = ClustersConfig(
        (ClusterSpec("east", gateway="east:80"), ClusterSpec("west", gateway="west:80")), ttl_s=5.0
    )
    gw = GlobalGateway(cfg, clock=ft.clock, sleep=ft.sleep, fetch=False, seed=0)
    r = gw.router
    p = r.policy
    assert isinstance(p, KvgatePolicy)
    for name in ("east", "west"):
        r.states[name].set_aggregate(
            PoolAggregate(name, 1.0, 2, 2, capacity=2.0, headroom=2.0, request_slots=16.0), ft.now
        )
    state = p.rng.getstate()
    for _ in range(3):
        resp = await gw._readyz(None)  # type: ignore[arg-type]
        assert resp.status == 200
    assert p.first_to == {} and p.rng.getstate() == state
    # Ready exactly when ``order`` names a cluster: not with fresh snapshots and no ready endpoint.
    for name in ("east", "west"):
        r.states[name].set_aggregate(PoolAggregate(name, 1.0, 0, 0, capacity=0.0, headroom=0.0), ft.now)
    assert not r.order(ClusterRequest())
    assert (await gw._readyz(None)).status == 503  # type: ignore[arg-type]


# --- N2 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prior", [0.0, -0.05, float("nan"), float("inf")])
def test_a_prior_ttft_that_is_not_a_positive_number_is_refused(prior: float) -> None:
    """0 made every ``order`` raise ZeroDivisionError once a cluster had a floor, a negative value
    ValueError (math domain)."""
    with pytest.raises(ValueError, match="prior_ttft_s"):
        KvgateWeights(prior_ttft_s=prior)
