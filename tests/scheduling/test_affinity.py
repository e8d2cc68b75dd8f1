"""Session affinity and the prefix-cache affinity filter."""

from __future__ import annotations

from collections import Counter

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheAffinityFilter, PrefixCacheScorer
from kvgate.scheduling.plugins.session import SessionAffinityScorer, session_digest
from kvgate.scheduling.types import InferenceRequest

from .helpers import cycle, ep, fleet, handle


def test_session_affinity_scorer_and_bound() -> None:
    eps = [ep("a:1"), ep("b:1")]
    s = SessionAffinityScorer("s", handle(), max_sessions=2)
    assert s.score(cycle(session_key="u1"), eps) == [0.0, 0.0]
    s.on_picked(cycle(session_key="u1"), eps[1])
    assert s.score(cycle(session_key="u1"), eps) == [0.0, 1.0]
    assert s.score(cycle(), eps) == [0.0, 0.0]
    s.on_picked(cycle(session_key="u2"), eps[0])
    s.on_picked(cycle(session_key="u3"), eps[0])
    assert session_digest("u1") not in s.sessions and len(s.sessions) == 2


def test_session_affinity_in_a_profile() -> None:
    cfg = {
        "plugins": [{"type": "session-affinity-scorer"}, {"type": "max-score-picker"}],
        "schedulingProfiles": [
            {
                "name": "d",
                "plugins": [{"pluginRef": "session-affinity-scorer"}, {"pluginRef": "max-score-picker"}],
            }
        ],
    }
    d = build_director(cfg, fleet(4), clock=lambda: 0.0, seed=3)
    first = d.pick(InferenceRequest("r0", "m", session_key="alice")).primary
    assert all(
        d.pick(InferenceRequest(f"r{i}", "m", session_key="alice")).primary is first for i in range(10)
    )


def _filter(store: EndpointStore) -> tuple[PrefixCacheScorer, PrefixCacheAffinityFilter]:
    h = handle(store)
    p = PrefixCacheScorer("prefix", h)
    h.plugins["prefix"] = p
    return p, PrefixCacheAffinityFilter("f", h)


def test_affinity_filter_keeps_holders_until_overloaded() -> None:
    store = EndpointStore([ep("a:1"), ep("b:1"), ep("c:1")])
    eps = list(store.all())
    p, f = _filter(store)
    text = "shared " * 200
    c = cycle(text)
    p.prepare(c, eps)
    assert f.filter(c, eps) == eps  # nothing cached yet: no filtering
    p.on_picked(c, eps[1])
    c2 = cycle(text + "more")
    p.prepare(c2, eps)
    assert f.filter(c2, eps) == [eps[1]]
    eps[1].metrics.waiting_queue_size = 9  # the holder is overloaded: pass everyone through
    assert f.filter(c2, eps) == eps
    eps[1].metrics.updated_at = -100.0  # stale metrics are not evidence of overload
    assert f.filter(c2, eps) == [eps[1]]
    eps[1].inflight.requests = 64  # but its own in-flight count is
    assert f.filter(c2, eps) == eps


def test_affinity_filter_policy_spills_under_inflight_load() -> None:
    cfg = {
        "plugins": [
            {"type": "prefix-cache-affinity-filter", "parameters": {"maxInFlight": 4}},
            {"type": "prefix-cache-scorer"},
            {"type": "token-load-scorer"},
        ],
        "schedulingProfiles": [
            {
                "name": "d",
                "plugins": [
                    {"pluginRef": "prefix-cache-affinity-filter"},
                    {"pluginRef": "token-load-scorer"},
                ],
            }
        ],
    }
    store = fleet(3)
    d = build_director(cfg, store, clock=lambda: 0.0, seed=0)
    got: Counter[str] = Counter()
    for i in range(12):
        r = InferenceRequest(f"r{i}", "m", prompt_text="system " * 100 + str(i), max_tokens=10)
        e = d.pick(r).primary
        d.on_dispatched(r, e)
        got[e.address] += 1
    assert max(got.values()) <= 6 and len(got) >= 2, got  # sticky, then spills once the holder has 4
