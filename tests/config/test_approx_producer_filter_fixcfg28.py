"""llm-d's optimized-baseline layout has an ``approx-prefix-cache-producer`` read by a
``prefix-cache-affinity-filter`` (its default producer), with no ``prefix-cache-scorer``: the filter reads
the producer's index, built with its parameters (here 64-token blocks, autoTune off, a 131072-token cap),
review s28-rev-cfg28 F5, fixcfg28. Fails on main ca67a4cb: the filter's matches came from a private
implicit scorer with kvgate's defaults, the producer's parameters accepted and unused."""

from __future__ import annotations

import pytest

from kvgate.config.picker import load_config
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from picker_plugins import affinity_filter, affinity_filters, director_for

DOC = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters:
    blockSizeTokens: 64
    autoTune: false
    maxPrefixTokensToMatch: 131072
- type: prefix-cache-affinity-filter
- type: token-load-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
"""


def test_the_affinity_filter_reads_the_producers_settings() -> None:
    prefix = affinity_filter(director_for(DOC)).prefix
    assert (prefix.block_size, prefix.auto_tune, prefix.max_tokens) == (64, False, 131072)


def test_two_consumers_share_the_producers_one_index() -> None:
    doc = DOC.replace(
        "- type: token-load-scorer\n",
        "- type: token-load-scorer\n- type: prefix-cache-affinity-filter\n  name: second\n"
        "  parameters: {prefixPluginRef: approx-prefix-cache-producer}\n",
    )
    filters = affinity_filters(director_for(doc))
    assert len(filters) == 2 and filters[0].prefix is filters[1].prefix
    assert filters[0].prefix.block_size == 64


def _filter_prefix(doc: str) -> object:
    return affinity_filter(director_for(doc)).prefix


NAMED = DOC.replace(
    "- type: prefix-cache-affinity-filter\n",
    "- type: prefix-cache-affinity-filter\n"
    "  parameters: {prefixMatchInfoProducerName: approx-prefix-cache-producer}\n",
)


def test_the_filter_names_its_producer_the_references_way() -> None:
    # The filter's own llm-d key (was an unknown parameter): the producer's index, with its parameters...
    prefix = _filter_prefix(NAMED)
    assert isinstance(prefix, PrefixCacheScorer) and (prefix.block_size, prefix.max_tokens) == (64, 131072)
    # ... or, where a prefix-cache-scorer names the same producer, that scorer (which holds its index).
    with_scorer = NAMED.replace(
        "- type: token-load-scorer\n",
        "- type: token-load-scorer\n- type: prefix-cache-scorer\n  name: approx\n"
        "  parameters: {prefixMatchInfoProducerName: approx-prefix-cache-producer}\n",
    )
    director = director_for(with_scorer)
    flt = affinity_filter(director)
    assert flt.prefix is director.handle.plugins["approx"] and flt.prefix.block_size == 64


def test_a_filter_naming_no_producer_names_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"^plugins\[1\]\.parameters\.prefixMatchInfoProducerName: no plugin"
    ):
        load_config(NAMED.replace("{prefixMatchInfoProducerName: approx-prefix-cache-producer}",
                                  "{prefixMatchInfoProducerName: absent}"))  # fmt: skip
