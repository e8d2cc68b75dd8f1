"""qa27 Q1: the prefix-cache-scorer takes the reference's parameter names in the reference's units.

The reference names the block size ``blockSizeTokens`` (tokens) and caps the match with
``maxPrefixTokensToMatch`` (tokens; it replaces ``maxPrefixBlocksToMatch`` when set, over the block size in
use); its older keys are in characters: ``blockSize`` (deprecated) and GIE v0.4-v0.5's ``hashBlockSize``.
On 6782b99d all three new names were refused as unknown parameters and ``blockSize`` was read as tokens
(an upstream ``blockSize: 64`` gave 64-token blocks, four times the reference's); a true typo stays a
config error naming its key.
"""

from __future__ import annotations

import logging

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.types import InferenceRequest

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters:
    {param}
    lruCapacityPerServer: 31250
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: max-score-picker
"""


def _scorer(**params: object) -> PrefixCacheScorer:
    return PrefixCacheScorer.create("p", Params(dict(params), "p"), PluginHandle())


@pytest.mark.parametrize(
    "param",
    ["hashBlockSize: 64", "blockSizeTokens: 16", "maxPrefixTokensToMatch: 131072"],
    ids=["gie-v0.5", "blockSizeTokens", "maxPrefixTokensToMatch"],
)
def test_the_references_prefix_parameters_load(param: str) -> None:
    build_director(CONFIG.format(param=param), EndpointStore(), clock=lambda: 0.0, seed=0)


def test_block_sizes_are_read_in_the_references_units() -> None:
    assert _scorer(blockSizeTokens=8, autoTune=False).block_size == 8
    # The reference's older keys are characters: 64 characters are its 16-token blocks.
    assert _scorer(blockSize=64, autoTune=False).block_size == 16
    assert _scorer(hashBlockSize=64, autoTune=False).block_size == 16
    # Both given: blockSizeTokens, as the reference.
    assert _scorer(blockSizeTokens=32, blockSize=64).block_size == 32
    assert _scorer().block_size == 16


def test_a_converted_or_ignored_key_is_one_warning_line_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.config.picker")
    load_config(CONFIG.format(param="blockSize: 64"))
    lines = [r.getMessage() for r in caplog.records if r.name == "kvgate.config.picker"]
    assert lines == [
        "plugins[2].parameters.blockSize: the reference's deprecated block size in characters: read as 16 "
        "tokens (64 / 4); write blockSizeTokens: 16 (kvgate before qa27 Q1 read it as tokens: to keep that, "
        "write blockSizeTokens: 64)"
    ]
    caplog.clear()
    load_config(CONFIG.format(param="blockSizeTokens: 32\n    hashBlockSize: 64"))
    lines = [r.getMessage() for r in caplog.records if r.name == "kvgate.config.picker"]
    assert lines == ["plugins[2].parameters.hashBlockSize: ignored: blockSizeTokens is set (32 tokens)"]


def test_max_prefix_tokens_caps_the_match_over_the_block_size_in_use() -> None:
    scorer = _scorer(maxPrefixTokensToMatch=1024, maxPrefixBlocksToMatch=8)
    assert scorer.max_blocks == 64  # 1024 tokens / 16-token blocks, the block cap replaced
    ep = make_endpoint("127.0.0.1:1")
    ep.metrics.block_size = 32  # the servers' block size (autoTune): 1024 / 32
    req = InferenceRequest(request_id="r", model="m", prompt_text="x" * 100_000)
    cycle = CycleState(req, 0.0)
    scorer.prepare(cycle, [ep])
    assert scorer.max_blocks == 32
    assert len(cycle.data["prefix-cache"].hashes) == 32
    assert _scorer(maxPrefixBlocksToMatch=8).max_blocks == 8  # unset: the block cap


@pytest.mark.parametrize(
    ("param", "key"),
    [
        ("blockSizeToken: 16", "blockSizeToken"),
        ("maxPrefixTokenToMatch: 8", "maxPrefixTokenToMatch"),
        ("blockSizeTokens: 0", "blockSizeTokens"),
        ("maxPrefixTokensToMatch: -1", "maxPrefixTokensToMatch"),
    ],
)
def test_typos_and_bad_values_stay_errors_naming_the_key(param: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^plugins\[2\]\.parameters\.{key}: "):
        load_config(CONFIG.format(param=param))
