"""llm-d's ``precise-prefix-cache-scorer`` parameters load as written (cfg28): its nested
``tokenProcessorConfig.blockSize`` (tokens; llm-d-router's ``blockSizeTokens``) and ``hashSeed`` (also
under ``indexerConfig``, llm-d-kv-cache's earlier placement), ``kvEventsConfig`` (each pod's
``podDiscoveryConfig.socketPort``), ``indexerConfig.tokenizersPoolConfig.modelName``,
``speculativeIndexing`` are taken as kvgate's settings; what kvgate cannot do is a ConfigError naming the
key. kvgate's own ``blockSize`` (tokens) stays an alias. Fails on main 2a9ab840 (``tokenProcessorConfig``:
unknown parameter)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.config.director import build_director
from kvgate.config.picker import load_config, parse_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.plugins import precise_prefix
from kvgate.scheduling.plugins.precise_prefix import DEFAULT_SPECULATIVE_TTL, PrecisePrefixCacheScorer

INDEX = "cfg28"

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
# As llm-d's precise-prefix-cache guide writes it (llm-d-inference-scheduler's scorer parameters).
LLMD = """\
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    indexName: cfg28
    tokenProcessorConfig:
      blockSize: 64
      hashSeed: "42"
    indexerConfig:
      kvBlockIndexConfig:
        enableMetrics: true
      tokenizersPoolConfig:
        modelName: Qwen/Qwen3-0.6B
    kvEventsConfig:
      topicFilter: "kv@"
      concurrency: 8
      discoverPods: true
      podDiscoveryConfig:
        socketPort: 5556
    speculativeIndexing: true
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
    weight: 2
"""


@pytest.fixture(autouse=True)
def _own_index() -> Iterator[None]:
    """Every scorer here on its own index (``indexName: cfg28``), dropped after: another test's
    ``default`` index, in another key mode, would clash."""
    yield
    precise_prefix._INDEXES.pop(INDEX, None)


def _scorer(text: str) -> PrecisePrefixCacheScorer:
    store = EndpointStore([make_endpoint("10.0.0.5:8000")])
    director = build_director(load_config(HEAD + text), store, clock=lambda: 0.0, seed=0)
    (scorer,) = (p for p in director.handle.plugins.values() if isinstance(p, PrecisePrefixCacheScorer))
    return scorer


def test_an_llmd_precise_config_loads_as_written(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # (no Hugging Face cache holding Qwen/Qwen3-0.6B: this machine's may, found at load since fixcfg28)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HOME", raising=False)
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    scorer = _scorer(LLMD)
    assert (scorer.default_block_size, scorer.hash_seed) == (64, "42")
    assert scorer.speculative_ttl == DEFAULT_SPECULATIVE_TTL
    assert scorer.event_source(make_endpoint("10.0.0.5:8000")) == ("tcp://10.0.0.5:5556", None)
    assert [r.getMessage() for r in caplog.records] == [
        "plugins[0].parameters.indexerConfig.tokenizersPoolConfig.modelName: 'Qwen/Qwen3-0.6B' has no "
        "tokenizer.json in the local Hugging Face cache (kvgate downloads none): read as tokenizer: auto "
        "(each request's model name looked up locally), unless tokenizer is set"
    ]


def test_kvgates_own_blocksize_stays_an_alias_and_the_newer_names_read_the_same() -> None:
    own = "plugins:\n- type: precise-prefix-cache-scorer\n  parameters: {blockSize: 32, indexName: cfg28}\n"
    assert _scorer(own).default_block_size == 32
    newest = (
        "plugins:\n- type: precise-prefix-cache-scorer\n  parameters:\n    indexName: cfg28\n"
        "    tokenProcessorConfig: {blockSizeTokens: 128, blockSize: 64}\n"  # (the newer name wins)
        "    speculativeIndexing: false\n"
    )
    scorer = _scorer(newest)
    assert (scorer.default_block_size, scorer.speculative_ttl) == (128, 0.0)
    older = (
        "plugins:\n- type: precise-prefix-cache-scorer\n  parameters:\n    indexName: cfg28\n"
        "    blockSize: 48\n    indexerConfig: {tokenProcessorConfig: {blockSize: 48}}\n"
    )
    assert _scorer(older).default_block_size == 48  # (the same value twice: no conflict)
    assert _scorer(older).event_source(make_endpoint("10.0.0.5:8000")) is None  # (no kvEventsConfig)


def _doc(parameters: str) -> str:
    # (``indexName`` added as a key of the flow mapping ``parameters``)
    with_index = "{indexName: cfg28, " + parameters[1:] if parameters != "{}" else "{indexName: cfg28}"
    return HEAD + f"plugins:\n- type: precise-prefix-cache-scorer\n  parameters: {with_index}\n"


P = "plugins[0].parameters"


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        (
            "{blockSize: 16, tokenProcessorConfig: {blockSize: 64}}",
            f"{P}.tokenProcessorConfig.blockSize: 64 conflicts with {P}.blockSize",
        ),
        (
            "{tokenProcessorConfig: {blockSize: 64}, indexerConfig: {tokenProcessorConfig: {blockSize: 16}}}",
            f"{P}.indexerConfig.tokenProcessorConfig.blockSize: 16 conflicts with "
            f"{P}.tokenProcessorConfig.blockSize",
        ),
        ("{tokenProcessorConfig: {blockSzie: 64}}", f"{P}.tokenProcessorConfig.blockSzie: unknown parameter"),
        ("{tokenProcessorConfig: 64}", f"{P}.tokenProcessorConfig: must be a mapping"),
        (
            "{indexerConfig: {kvBlockIndexConfig: {redisConfig: {address: r:6379}}}}",
            f"{P}.indexerConfig.kvBlockIndexConfig.redisConfig: not supported",
        ),
        (
            "{indexerConfig: {kvBlockIndxConfig: {}}}",
            f"{P}.indexerConfig.kvBlockIndxConfig: unknown parameter",
        ),
        ("{kvEventsConfig: {zmqEndpoint: 'tcp://*:5557'}}", f"{P}.kvEventsConfig.zmqEndpoint: not supported"),
        ("{kvEventsConfig: {engineType: sglang}}", f"{P}.kvEventsConfig.engineType: not supported"),
        (
            "{eventsPortOffset: 1000, kvEventsConfig: {discoverPods: true}}",
            f"{P}.kvEventsConfig.discoverPods: 5557 conflicts with {P}.eventsPortOffset",
        ),
        (
            "{kvEventsConfig: {podDiscoveryConfig: {socketPort: 0}}}",
            f"{P}.kvEventsConfig.podDiscoveryConfig.socketPort: must be in [1, 65535]",
        ),
        (
            "{speculativeTTL: 5s, speculativeIndexing: false}",
            f"{P}.speculativeIndexing: 0.0 conflicts with {P}.speculativeTTL",
        ),
        ("{speculativeIndexing: 1}", f"{P}.speculativeIndexing: must be true or false"),
    ],
)
def test_what_kvgate_cannot_honour_names_the_key(parameters: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_doc(parameters))
    assert str(e.value).startswith(error), str(e.value)


_leaf = st.one_of(
    st.integers(-2, 70_000), st.booleans(), st.none(), st.sampled_from(["", "kv@", "42", "vllm", "x"])
)
_names = st.sampled_from(
    ["blockSize", "blockSizeTokens", "hashSeed", "tokenProcessorConfig", "kvBlockIndexConfig",
     "enableMetrics", "inMemoryConfig", "redisConfig", "tokenizersPoolConfig", "modelName", "kvEventsConfig",
     "topicFilter",
     "concurrency", "discoverPods", "podDiscoveryConfig", "socketPort", "replaySocketPort", "zmqEndpoint",
     "engineType", "speculativeIndexing", "indexerConfig", "eventsPortOffset", "bogus"]
)  # fmt: skip
_tree = st.recursive(_leaf, lambda kids: st.dictionaries(_names, kids, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names, _tree, max_size=5))
def test_fuzzed_llmd_parameters_load_or_name_a_key(params: dict[str, Any]) -> None:
    """Any nesting of llm-d's (and kvgate's) keys either loads or fails with a ConfigError naming a key
    under the scorer's parameters: never another exception, and never left silently unread."""
    doc = yaml.safe_load(_doc("{}"))
    doc["plugins"][0]["parameters"] = {**params, "indexName": INDEX}
    try:
        parse_config(doc, announce=False)
    except ConfigError as e:
        assert str(e).startswith(P), str(e)
