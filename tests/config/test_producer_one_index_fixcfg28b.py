"""A producer named by a prefix-cache-scorer (``prefixMatchInfoProducerName``) and by an affinity filter's
kvgate key (``prefixPluginRef: prod``) has one index, the scorer's: one post-pick, the filter reading what
the scorer's feedback corrects (review s28-rev-fixes28a F6: ``prefixPluginRef`` got the producer's own
index beside the scorer's, each pick hashed twice). ``[prefixPluginRef]`` fails on 43a53886;
``[prefixMatchInfoProducerName]`` (the reference's way) is the control."""

from __future__ import annotations

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheAffinityFilter


@pytest.mark.parametrize("ref", ["prefixMatchInfoProducerName", "prefixPluginRef"])
def test_one_producer_one_index(ref: str) -> None:
    doc = f"""\
plugins:
- type: approx-prefix-cache-producer
  name: prod
  parameters: {{blockSizeTokens: 64, autoTune: false}}
- type: prefix-cache-scorer
  parameters: {{prefixMatchInfoProducerName: prod}}
- type: prefix-cache-affinity-filter
  parameters: {{{ref}: prod}}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: prefix-cache-scorer
  - pluginRef: max-score-picker
"""
    d = build_director(
        load_config(doc), EndpointStore([make_endpoint("10.0.0.1:8000")]), clock=lambda: 0.0, seed=0
    )
    (flt,) = (p for p in d.handle.plugins.values() if isinstance(p, PrefixCacheAffinityFilter))
    scorer = d.handle.plugins["prefix-cache-scorer"]
    assert flt.prefix.index is scorer.index, f"the filter reads {flt.prefix.name}, the scorer its own index"
    assert [p.name for p in d.profiles["default"].post_pick] == ["prefix-cache-scorer"]
