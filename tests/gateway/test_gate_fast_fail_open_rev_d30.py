"""Review s30-rev-d30 L1: ``gate``'s fail-open returns the non-ejected endpoints straight away when none is
down by its scrapes, and ``serving``'s answer otherwise. Guards that shortcut: on pools of every mix of
ejected, scrape-failing, 404-answering, never-scraped and back-from-an-outage endpoints, the fail-open is
exactly the pool's best standing (``serving``). A guard of a refactor: it passes on c50775b6 too."""

from __future__ import annotations

import random

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.health import HealthPolicy, gate, is_healthy, serving

POLICY = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)
NOW = 100.0


def _random_ep(rng: random.Random, i: int) -> Endpoint:
    ep = Endpoint(
        f"10.0.0.{i}:8000",
        metrics=EndpointMetrics(updated_at=rng.choice([None, 90.0, 99.0])),
        healthy=rng.random() < 0.7,
    )
    ep.scrape_failures = rng.choice([0, 2, 3, 9])
    ep.answered_at = rng.choice([None, 90.0, 98.0, 99.5])
    ep.down_since_ejected = rng.random() < 0.5
    return ep


def test_the_fail_open_is_the_pools_best_standing():
    rng = random.Random(30)
    checked = 0
    for _ in range(5000):
        pool = [_random_ep(rng, i) for i in range(rng.randint(1, 6))]
        if any(is_healthy(ep, NOW, POLICY) for ep in pool):
            continue
        assert list(gate(pool, NOW, POLICY)) == serving(pool, NOW, POLICY), pool
        checked += 1
    assert checked > 1000
