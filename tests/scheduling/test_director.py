"""The Director: candidates, typed errors, shedding, explanation, in-flight accounting, policies."""

from __future__ import annotations

import pytest

from kvgate.config.director import build_director
from kvgate.config.policies import POLICIES, policy_config
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest, NoCapacityError, ShedError, Usage

from .helpers import ep, fleet


def _req(i: int = 0, text: str = "hello " * 50, **kw: object) -> InferenceRequest:
    return InferenceRequest(f"r{i}", "m", prompt_text=text, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_picks(name: str) -> None:
    store = fleet(4)
    d = build_director(name, store, clock=lambda: 0.0, seed=0)
    for i in range(20):
        r = _req(i)
        res = d.pick(r)
        assert res.primary in store.all()
        d.on_dispatched(r, res.primary)
    assert policy_config(name).name == name


def test_candidates_subset_health_and_errors() -> None:
    store = fleet(3)
    d = build_director("kvgate", store, clock=lambda: 0.0, seed=0)
    r = _req(subset=frozenset({"10.0.0.2:8000"}))
    assert d.pick(r).primary.address == "10.0.0.2:8000"
    with pytest.raises(NoCapacityError):
        d.pick(_req(subset=frozenset({"10.9.9.9:1"})))
    for e in store.all():
        e.healthy = False
    with pytest.raises(NoCapacityError) as ei:
        d.pick(_req())
    assert ei.value.status == 503
    with pytest.raises(NoCapacityError):
        build_director("reference", EndpointStore(), clock=lambda: 0.0).pick(_req())


def test_sheddable_rejected_at_saturation_normal_not() -> None:
    now = [0.0]
    store = EndpointStore([ep("a:1", waiting_queue_size=10), ep("b:1", kv_cache_usage=0.9)])
    d = build_director("kvgate", store, clock=lambda: now[0])
    with pytest.raises(ShedError) as ei:
        d.pick(_req(priority=-1))
    assert ei.value.status == 429
    assert d.pick(_req(priority=0)).primary is not None
    for e in store.all():
        e.metrics.waiting_queue_size, e.metrics.kv_cache_usage = 0, 0.1
    assert d.pick(_req(priority=-1)).primary is not None
    now[0] = 0.5  # metrics now older than 200 ms: the utilization detector calls that saturated
    with pytest.raises(ShedError):
        d.pick(_req(priority=-1))


def test_explanation_lists_plugins_and_winner() -> None:
    d = build_director("reference", fleet(3), clock=lambda: 0.0, seed=0)
    res = d.pick(_req(), explain=True)
    prof = res.explanation["profiles"]["default"]
    assert res.explanation["winner"] == res.primary.address == prof["winner"]
    assert len(prof["candidates"]) == 3
    assert [(s["plugin"], s["weight"]) for s in prof["scorers"]] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    assert set(prof["totals"]) == set(prof["candidates"])
    assert d.pick(_req()).explanation == {}  # not built unless asked


def test_inflight_accounting_round_trip() -> None:
    store = fleet(1)
    d = build_director("kvgate", store, clock=lambda: 0.0)
    e = store.all()[0]
    text = "x" * 64 * 10  # 160 tokens, 10 blocks
    r1 = _req(1, text, max_tokens=50)
    d.on_dispatched(r1, d.pick(r1).primary)
    assert (e.inflight.requests, e.inflight.pending_prefill_tokens, e.inflight.pending_decode_tokens) == (
        1,
        160,
        50,
    )
    r2 = _req(2, text, max_tokens=10)  # same prompt: expected fully cached at e
    d.on_dispatched(r2, d.pick(r2).primary)
    assert (e.inflight.requests, e.inflight.pending_prefill_tokens) == (2, 160)
    d.on_first_token(r1, e)
    d.on_first_token(r1, e)  # idempotent
    assert (e.inflight.pending_prefill_tokens, e.inflight.decoding) == (0, 1)
    d.on_finished(r1, e, Usage(160, 50, 0), ok=True)
    d.on_finished(r2, e, None, ok=False)  # failed before its first token
    d.on_finished(r2, e, None, ok=False)  # a duplicate finish changes nothing
    assert (
        e.inflight.requests,
        e.inflight.pending_prefill_tokens,
        e.inflight.pending_decode_tokens,
        e.inflight.decoding,
    ) == (0, 0, 0, 0)


def test_build_from_mapping_and_yaml_text() -> None:
    doc = {
        "plugins": [{"type": "least-request"}],
        "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "least-request"}]}],
    }
    d = build_director(doc, fleet(2), clock=lambda: 0.0)
    assert isinstance(d, Director) and d.pick(_req()).profile == "p"
    yaml_text = "plugins:\n- type: random-picker\n"
    assert build_director(yaml_text, fleet(2), clock=lambda: 0.0).pick(_req()).profile == "default"


def test_clock_is_injected() -> None:
    calls: list[int] = []

    def clock() -> float:
        calls.append(1)
        return 0.0

    d = build_director("kvgate", fleet(2), clock=clock)
    d.pick(_req())
    assert calls


def test_pool_gauges_and_pick_counter() -> None:
    from prometheus_client import REGISTRY

    store = fleet(3)
    store.all()[0].metrics.kv_cache_usage = 0.3
    store.all()[1].healthy = False
    d = build_director("round-robin", store, clock=lambda: 0.0)
    before = REGISTRY.get_sample_value("kvgate_scheduler_picks_total", {"endpoint": "10.0.0.0:8000"}) or 0.0
    d.pick(_req())
    assert REGISTRY.get_sample_value("inference_pool_ready_pods", {"name": "default"}) == 2
    kv = REGISTRY.get_sample_value("inference_pool_average_kv_cache_utilization", {"name": "default"})
    assert kv == pytest.approx(0.15)
    after = REGISTRY.get_sample_value("kvgate_scheduler_picks_total", {"endpoint": "10.0.0.0:8000"})
    assert after == before + 1


def test_inflight_accounting_uses_precise_matches() -> None:
    # kvgate's profile fed by the precise scorer: a second request for a prompt already credited to the
    # endpoint (dispatch-time credit, no engine event yet) must not count as pending prefill again.
    from kvgate.bench.precise import PRECISE_POLICIES
    from kvgate.config.picker import load_config

    yaml_text = PRECISE_POLICIES["kvgate-precise"].replace("indexName: fleetsim", "indexName: test-director")
    store = fleet(1)
    now = [0.0]
    d = build_director(load_config(yaml_text), store, clock=lambda: now[0])
    e = store.all()[0]
    ids = list(range(1000, 1064))  # 64 tokens: 4 blocks of 16
    r1 = _req(1, "", token_ids=ids, max_tokens=8)
    d.on_dispatched(r1, d.pick(r1).primary)
    assert e.inflight.pending_prefill_tokens == 64  # nothing cached yet
    r2 = _req(2, "", token_ids=ids, max_tokens=8)
    d.on_dispatched(r2, d.pick(r2).primary)
    assert e.inflight.pending_prefill_tokens == 64  # r2 expected fully cached behind r1


def test_sent_tokens_is_a_running_total_of_what_was_dispatched() -> None:
    """``InFlight.sent_tokens`` (the utilization detector's KV carry-forward): every prompt token and
    the expected output of each request dispatched, never taken back when it finishes."""
    store = fleet(1)
    d = build_director("round-robin", store, clock=lambda: 0.0, seed=0)
    (e,) = store.all()
    r = _req(0, prompt_tokens=300, max_tokens=20)
    d.on_dispatched(r, d.pick(r).primary)
    assert e.inflight.sent_tokens == 320
    d.on_first_token(r, e)
    d.on_finished(r, e, Usage(300, 20), True)
    assert e.inflight.sent_tokens == 320 and e.inflight.requests == 0
