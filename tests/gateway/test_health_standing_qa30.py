"""Review s30-qa30 Q1/Q3/Q7: one notion of "can take traffic now" (``datalayer.health``: the ejection flag
and the scrapes together) for the picker's fail-open, the retry's "anywhere left?", the gateway's "never
eject the last one" and the probe of a server back from an outage. Each fails on main fbb1a6a0 (no
``standing``/``serving``/``up``: an ImportError there; the behaviour by the tests beside it:
test_revival_after_outage_qa30.py, test_last_live_not_ejected_qa30.py, test_busy_429_beside_dead_qa30.py)."""

from __future__ import annotations

from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.health import (
    OUT,
    REVIVED,
    SCRAPE_DOWN,
    UP,
    HealthPolicy,
    gate,
    ready_endpoints,
    serving,
    standing,
)
from kvgate.gateway.health import HealthTracker

POLICY = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)
NOW = 100.0


def _ep(
    address: str,
    updated_at: float | None = 99.0,
    failures: int = 0,
    healthy: bool = True,
    answered_at: float | None = None,
) -> Endpoint:
    ep = Endpoint(address, metrics=EndpointMetrics(updated_at=updated_at), healthy=healthy)
    ep.scrape_failures = failures
    ep.answered_at = answered_at if answered_at is not None else updated_at
    return ep


def test_standing_reads_the_flag_and_the_scrapes_together():
    assert standing(_ep("a:1"), NOW, POLICY) == UP
    assert standing(_ep("a:1", None), NOW, POLICY) == UP  # (not scraped yet)
    dead = _ep("b:1", 98.0, failures=3)  # refused since its last page
    assert standing(dead, NOW, POLICY) == SCRAPE_DOWN
    # A /metrics that answers 404 fails every scrape, yet the server is alive.
    no_metrics = _ep("c:1", None, failures=9, answered_at=99.5)
    assert standing(no_metrics, NOW, POLICY) == UP
    revived = _ep("d:1", healthy=False)
    assert standing(revived, NOW, POLICY) == OUT  # (its scrapes answered all along: nothing came back)
    revived.down_since_ejected = True  # (seen down by its scrapes since its ejection: back from an outage)
    assert standing(revived, NOW, POLICY) == REVIVED
    assert standing(_ep("e:1", 98.0, failures=3, healthy=False), NOW, POLICY) == OUT
    assert standing(_ep("f:1", None, healthy=False), NOW, POLICY) == OUT  # (never scraped: no sign of life)


def test_fail_open_goes_to_the_pools_best_standing():
    back = _ep("a:1", healthy=False)  # ejected, down by its scrapes since, scraped fresh again
    back.down_since_ejected = True
    dead = _ep("b:1", 90.0, failures=3)  # never ejected, its scrapes refused
    assert list(gate([back, dead], NOW, POLICY)) == [back]  # (main: [dead])
    assert ready_endpoints([back, dead], NOW, POLICY) == [back]  # (readiness no stricter than routing)
    unknown = _ep("c:1", None)
    assert list(gate([back, dead, unknown], NOW, POLICY)) == [unknown]
    # Every endpoint down by its scrapes (the scraper cut off, say): every non-ejected one, as before.
    out = _ep("d:1", 90.0, failures=3, healthy=False)
    assert list(gate([dead, out], NOW, POLICY)) == [dead]
    assert serving([out], NOW, POLICY) == []


def test_a_retry_finds_nowhere_to_go_beside_a_scrape_dead_server():
    busy, dead = _ep("a:1"), _ep("b:1", 90.0, failures=3)
    assert serving([busy, dead], NOW, POLICY) == [busy]  # the busy one tried: nothing left


def _tracker(clock: list[float]) -> HealthTracker:
    cfg = HealthConfig(eject_after_failures=1, eject_base_s=300.0, eject_max_s=300.0)
    return HealthTracker(cfg, lambda: clock[0])


def test_never_ejects_the_only_endpoint_up_beside_dead_ones():
    clock = [NOW]
    live, dead = _ep("a:1"), _ep("b:1", 90.0, failures=3)
    tracker = _tracker(clock)
    assert not tracker.failure(live, [live, dead])
    assert live.healthy
    # A whole pool down by its scrapes: nobody ejected (a back-off would only delay the recovery).
    other_dead = _ep("c:1", 90.0, failures=3)
    assert not tracker.failure(dead, [dead, other_dead])
    assert dead.healthy
    # Beside a peer that is up, as before.
    assert tracker.failure(dead, [dead, live])
    assert not dead.healthy


def test_an_ejected_endpoint_back_from_an_outage_is_due_at_once():
    clock = [NOW]
    a, b = _ep("a:1"), _ep("b:1")
    tracker = _tracker(clock)
    assert tracker.failure(a, [a, b])
    assert tracker.due([a, b]) == []  # (its probe 300 s away; its scrapes fine: a back-off stands)
    a.scrape_failures = 3  # down
    clock[0] += 1.0
    assert tracker.due([a, b]) == []
    a.scrape_failures, a.metrics, a.answered_at = 0, EndpointMetrics(updated_at=clock[0]), clock[0]
    assert tracker.due([a, b]) == [a]  # back: probed now
    tracker.probe_result(a, False)  # (its /health not ready yet: the back-off again)
    assert tracker.due([a, b]) == []
