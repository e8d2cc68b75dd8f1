"""The index an ``approx-prefix-cache-producer`` builds for its consumers (outside ``handle.plugins``) hears
the responses as a declared prefix-cache-scorer does: with the producer's ``cachedTokensFeedback: true``
its picks leave its running set when they finish (review s28-rev-fixes28a F5: the Director took its
observers from ``handle.plugins`` only, so they stayed "running" for ever and the feedback never applied).
``[producer-only]`` fails on 43a53886; ``[declared-scorer]`` is the control."""

from __future__ import annotations

import time

import pytest

from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.types import InferenceRequest
from picker_plugins import affinity_filter, director_for

PRODUCER = """\
plugins:
- type: approx-prefix-cache-producer
  parameters: {blockSizeTokens: 16, autoTune: false, cachedTokensFeedback: true}
- type: prefix-cache-affinity-filter
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: queue-scorer
"""
SCORER = PRODUCER.replace("- type: approx-prefix-cache-producer\n", "- type: prefix-cache-scorer\n")


@pytest.mark.parametrize("doc", [SCORER, PRODUCER], ids=["declared-scorer", "producer-only"])
def test_the_index_hears_its_picks_finish(doc: str) -> None:
    store = EndpointStore([make_endpoint(f"10.227.0.{i}:8000") for i in range(2)])
    now = time.monotonic()
    for ep in store.all():
        ep.metrics.updated_at = now
        ep.answered_at = now
    d = director_for(doc, store, clock=time.monotonic)
    index = affinity_filter(d).prefix
    assert isinstance(index, PrefixCacheScorer) and index.cached_feedback
    for i in range(4):
        req = InferenceRequest(f"r{i}", "m", token_ids=list(range(100 + i)))
        ep = d.pick(req).primary
        d.on_dispatched(req, ep)
        d.on_finished(req, ep, None, True)
    running = sum(len(v) for v in index._running.values())
    assert running == 0, f"{running} finished picks still counted running on the index"
