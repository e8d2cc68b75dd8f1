"""llm-d-router's newest approximate-prefix layout (cfg28): an ``approx-prefix-cache-producer`` holds the
index's parameters and ``prefix-cache-scorer`` names it with ``prefixMatchInfoProducerName`` (llm-d-router
``approximateprefix/README.md``, its well-known ``tiered-prefix-cache-cpu`` config). kvgate's scorer holds
the index itself: it is built with the producer's parameters. What kvgate cannot do is a ConfigError naming
the key. Fails on main 2a9ab840 (``approx-prefix-cache-producer``: unknown plugin type)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.config.director import build_director
from kvgate.config.picker import load_config, parse_config
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
# llm-d-router's well-known "tiered-prefix-cache-cpu" config, as it ships (its test's YAML).
TIERED = """\
plugins:
- type: approx-prefix-cache-producer
  name: cpu-prefix-cache-producer
  parameters:
    autoTune: false
    lruCapacityPerServer: 1000
    blockSizeTokens: 64
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  name: gpu-prefix-cache-scorer
- type: prefix-cache-scorer
  name: cpu-prefix-cache-scorer
  parameters:
    prefixMatchInfoProducerName: cpu-prefix-cache-producer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2.0
  - pluginRef: gpu-prefix-cache-scorer
    weight: 1.0
  - pluginRef: cpu-prefix-cache-scorer
    weight: 1.0
"""


def _scorers(text: str) -> dict[str, PrefixCacheScorer]:
    director = build_director(load_config(HEAD + text), EndpointStore(), clock=lambda: 0.0, seed=0)
    return {n: p for n, p in director.handle.plugins.items() if isinstance(p, PrefixCacheScorer)}


def test_the_tiered_config_loads_and_the_scorer_takes_its_producers_parameters() -> None:
    scorers = _scorers(TIERED)
    cpu, gpu = scorers["cpu-prefix-cache-scorer"], scorers["gpu-prefix-cache-scorer"]
    assert (cpu.block_size, cpu.auto_tune, cpu.index.default_capacity) == (64, False, 1000)
    assert (gpu.block_size, gpu.auto_tune) == (16, True)  # (the reference's auto-created default producer)


def test_naming_the_default_producer_undeclared_is_the_defaults() -> None:
    text = (
        "plugins:\n- type: prefix-cache-scorer\n"
        "  parameters: {prefixMatchInfoProducerName: approx-prefix-cache-producer}\n"
    )
    (scorer,) = _scorers(text).values()
    assert (scorer.block_size, scorer.auto_tune) == (16, True)


def test_the_token_cap_and_the_deprecated_block_size_beside_blocksizetokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    text = (
        "plugins:\n- type: approx-prefix-cache-producer\n  name: p\n"
        "  parameters: {blockSizeTokens: 32, blockSize: 128, maxPrefixTokensToMatch: 131072}\n"
        "- type: prefix-cache-scorer\n  parameters: {prefixMatchInfoProducerName: p}\n"
    )
    (scorer,) = _scorers(text).values()
    assert (scorer.block_size, scorer.max_tokens) == (32, 131072)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["plugins[0].parameters.blockSize: ignored: blockSizeTokens is set (32 tokens)"]


def _producer(parameters: str, scorer: str = "{prefixMatchInfoProducerName: p}") -> str:
    return (
        HEAD + f"plugins:\n- type: approx-prefix-cache-producer\n  name: p\n  parameters: {parameters}\n"
        f"- type: prefix-cache-scorer\n  parameters: {scorer}\n"
    )


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (_producer("{blockSize: 64}"), "plugins[0].parameters.blockSize: the deprecated block size"),
        (_producer("{autoTune: false}"), "plugins[0].parameters.blockSizeTokens: must be > 0 when autoTune"),
        (
            _producer("{maxPrefixBlocksToMatch: 0, maxPrefixTokensToMatch: 0}"),
            "plugins[0].parameters.maxPrefixBlocksToMatch: 0 with maxPrefixTokensToMatch 0",
        ),
        (_producer("{blockSizeTokns: 16}"), "plugins[0].parameters.blockSizeTokns: unknown parameter"),
        (
            _producer("{}", "{prefixMatchInfoProducerName: q}"),
            "plugins[1].parameters.prefixMatchInfoProducerName: no plugin named 'q'",
        ),
        (
            _producer("{}", "{prefixMatchInfoProducerName: p, blockSizeTokens: 16}"),
            "plugins[1].parameters.blockSizeTokens: a prefix-cache-scorer that names its",
        ),
        (
            _producer("{}")
            + "- type: prefix-cache-scorer\n  name: two\n  parameters: {prefixMatchInfoProducerName: p}\n",
            "plugins[2].parameters.prefixMatchInfoProducerName: 'p' is read by plugins[1] already",
        ),
        (
            HEAD + "plugins:\n- type: queue-scorer\n  name: p\n"
            "- type: prefix-cache-scorer\n  parameters: {prefixMatchInfoProducerName: p}\n",
            "plugins[1].parameters.prefixMatchInfoProducerName: 'p' is a 'queue-scorer', not an",
        ),
        (
            _producer("{}") + "schedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: p\n",
            "schedulingProfiles[0].plugins[0].pluginRef: 'p' is a prefix-cache producer plugin",
        ),
    ],
)
def test_what_kvgate_cannot_honour_names_the_key(doc: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(doc)
    assert str(e.value).startswith(error), str(e.value)


_ints = st.one_of(st.integers(-3, 200_000), st.booleans(), st.none(), st.text(max_size=3), st.floats())
_keys = st.sampled_from(
    ["autoTune", "blockSizeTokens", "blockSize", "maxPrefixBlocksToMatch", "maxPrefixTokensToMatch",
     "lruCapacityPerServer", "maxTotalBlocks", "engineLru", "tokenizer", "bogus"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _ints, max_size=5), st.booleans())
def test_fuzzed_producer_parameters_load_or_name_a_key(params: dict[str, Any], extra: bool) -> None:
    """Any producer parameters either load (the scorer then has a positive block size and cap) or fail with
    a ConfigError naming a key under the producer's or the scorer's parameters: never another exception."""
    scorer: dict[str, Any] = {"prefixMatchInfoProducerName": "p"}
    if extra:
        scorer["autoTune"] = True
    doc = yaml.safe_load(_producer("{}"))
    doc["plugins"][0]["parameters"] = params
    doc["plugins"][1]["parameters"] = scorer
    try:
        cfg = parse_config(doc, announce=False)
    except ConfigError as e:
        assert str(e).startswith(("plugins[0].parameters", "plugins[1].parameters")), str(e)
        return
    assert not extra
    built = cfg.plugin("prefix-cache-scorer")
    assert built is not None and built.parameters["blockSizeTokens"] >= 1
    assert built.parameters["maxPrefixBlocksToMatch"] >= 1
