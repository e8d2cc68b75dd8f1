"""Review s30-qa30 Q1/Q7 through the EPP door (the same ``datalayer.health`` gate): with no endpoint
healthy, ``kvgate epp`` fails open to the endpoints not down by their scrapes (a server whose
``/metrics`` answers 404 is alive), not to one whose scrapes are refused. Fails on main fbb1a6a0: the
fail-open took every endpoint, the dead one included (about half the picks)."""

from __future__ import annotations

import collections

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import EndpointMetrics
from kvgate.datalayer.health import HealthPolicy
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.types import InferenceRequest


def test_the_epp_fails_open_to_live_endpoints_not_to_a_scrape_dead_one():
    now = [1000.0]
    store = EndpointStore.from_addresses(["10.0.0.1:8000", "10.0.0.2:8000"])
    alive, dead = store.all()
    # alive: /metrics answers 404 (every scrape fails, each answered); dead: refused since its last page
    alive.scrape_failures, alive.answered_at = 7, now[0] - 0.5
    dead.metrics = EndpointMetrics(updated_at=now[0] - 2)
    dead.scrape_failures, dead.answered_at = 5, now[0] - 2
    director = build_director("round-robin", store, lambda: now[0], seed=1)
    director.health = HealthPolicy(scrape_failures=3, metrics_staleness_s=5.0)  # (as extproc/context.py)
    picks: collections.Counter[str] = collections.Counter()
    for i in range(20):
        req = InferenceRequest(request_id=f"r{i}", model="m", prompt_text=f"prompt {i}", max_tokens=8)
        picks[director.pick(req).endpoints[0].address] += 1
    assert picks == {alive.address: 20}, dict(picks)
