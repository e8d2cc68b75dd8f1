"""A producer named by a prefix-cache-scorer (``prefixMatchInfoProducerName``) and by an affinity filter's
kvgate key (``prefixPluginRef: prod``) has one index, the scorer's: one post-pick, the filter reading what
the scorer's feedback corrects (review s28-rev-fixes28a F6: ``prefixPluginRef`` got the producer's own
index beside the scorer's, each pick hashed twice). ``[prefixPluginRef]`` fails on 43a53886;
``[prefixMatchInfoProducerName]`` (the reference's way) is the control."""

from __future__ import annotations

import pytest

from picker_plugins import affinity_filter, director_for


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
    d = director_for(doc)
    flt = affinity_filter(d)
    scorer = d.handle.plugins["prefix-cache-scorer"]
    assert flt.prefix.index is scorer.index, f"the filter reads {flt.prefix.name}, the scorer its own index"
    assert [p.name for p in d.profiles["default"].post_pick] == ["prefix-cache-scorer"]
