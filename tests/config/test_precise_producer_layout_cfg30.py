"""llm-d-router's split precise layout loads: a ``precise-prefix-cache-producer`` (llm-d's nested keys) named
by a ``prefix-cache-scorer`` (``prefixMatchInfoProducerName``), fed by a ``token-producer`` and wired under
an ``endpoint-notification-source``, is kvgate's ``precise-prefix-cache-scorer`` with the producer's
parameters; errors and warnings name the producer's keys. ``maxPrefixTokensToMatch`` among its parameters
caps the match (its tokens over the block size, as llm-d's approximate producer's key); under
``indexerConfig.kvBlockIndexConfig`` (where llm-d-router's sim-epp-no-hit-lru.yaml writes it and
llm-d-router ignores it) it is not applied, one WARNING line; ``kvEventsConfig.zmqEndpoint`` (llm-d's one
socket for every engine) is refused naming the key. Fails on 6d96a979: every one of these plugin types was
an unknown type (cfg30)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.config.director import build_director
from kvgate.config.picker import load_config, parse_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.plugins import precise_prefix
from kvgate.scheduling.plugins.precise_prefix import (
    DEFAULT_MAX_BLOCKS,
    PrecisePrefixCacheProducer,
    PrecisePrefixCacheScorer,
)

SAMPLES = Path(__file__).resolve().parents[2] / "scripts" / "epp_config_samples"
PRODUCER = "precise-prefix-cache-producer"


def _scorer(cfg: Any) -> tuple[PrecisePrefixCacheScorer, Any]:
    director = build_director(cfg, EndpointStore([make_endpoint("10.0.0.1:8000")]), clock=lambda: 0.0, seed=0)
    scorer = director.handle.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrecisePrefixCacheScorer)
    return scorer, director


def _doc(producer: dict[str, Any], scorer: dict[str, Any] | None = None, first: bool = False) -> dict:
    """The scorer declared after the producer (``first``: before it)."""
    plugins: list[dict[str, Any]] = [
        {"type": PRODUCER, "parameters": {"indexName": f"cfg30-{uuid.uuid4().hex[:8]}", **producer}},
        {"type": "prefix-cache-scorer", "parameters": scorer or {"prefixMatchInfoProducerName": PRODUCER}},
    ]
    if first:
        plugins.reverse()
    plugins.append({"type": "max-score-picker"})
    return {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": plugins,
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}],
            }
        ],
    }


def test_llmd_precise_sample_loads_as_kvgates_precise_scorer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cfg = load_config(SAMPLES / "llmd-precise.yaml")
    scorer, director = _scorer(cfg)
    try:
        assert isinstance(director.handle.plugins[PRODUCER], PrecisePrefixCacheProducer)
        # tokenProcessorConfig.blockSize: 64; the token-producer's model is not cached here: auto
        assert scorer.default_block_size == 64 and scorer.mode == "engine"
        assert scorer._tokenizer.setting == "auto"
        assert "plugins[0].parameters.modelName" in caplog.text  # (the token-producer's, once)
    finally:
        precise_prefix.release_indexes(director.handle)


def test_no_hit_lru_sample_loads_and_its_index_key_cap_is_not_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    cfg = load_config(SAMPLES / "llmd-no-hit-lru.yaml")
    key = "plugins[0].parameters.indexerConfig.kvBlockIndexConfig.maxPrefixTokensToMatch: not applied"
    assert caplog.text.count(key) == 1, caplog.text
    scorer, director = _scorer(cfg)
    try:
        assert scorer.default_block_size == 5 and scorer.cap_blocks(5) == DEFAULT_MAX_BLOCKS
    finally:
        precise_prefix.release_indexes(director.handle)


@pytest.mark.parametrize("first", [False, True])
def test_max_prefix_tokens_to_match_caps_the_match(first: bool) -> None:
    doc = _doc({"tokenProcessorConfig": {"blockSizeTokens": 5}, "maxPrefixTokensToMatch": 1280}, first=first)
    scorer, director = _scorer(parse_config(doc))
    try:
        assert scorer.cap_blocks(5) == 256 and scorer.cap_blocks(16) == 80
        assert len(scorer.keys_for(list(range(5000)), 5)) == 256
        assert len(scorer.keys_for(list(range(5000)), 16)) == 80
    finally:
        precise_prefix.release_indexes(director.handle)


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize(
    ("producer", "scorer", "key"),
    [
        ({"kvEventsConfig": {"zmqEndpoint": "tcp://*:5557"}}, None, "{P}.kvEventsConfig.zmqEndpoint"),
        ({"maxPrefixTokensToMatch": 64, "maxPrefixBlocksToMatch": 4}, None, "{P}.maxPrefixTokensToMatch"),
        ({"maxPrefixTokensToMatch": -1}, None, "{P}.maxPrefixTokensToMatch"),
        ({"checkpoint": {"interval": "1m"}}, None, "{P}.checkpoint"),
        (
            {"tokenProcessorConfig": {"blockSizeTokens": "x"}},
            None,
            "{P}.tokenProcessorConfig.blockSizeTokens",
        ),
        (
            {},
            {"prefixMatchInfoProducerName": PRODUCER, "blockSizeTokens": 16},
            "{S}.blockSizeTokens",
        ),
    ],
)
def test_errors_name_the_key(
    producer: dict[str, Any], scorer: dict[str, Any] | None, key: str, first: bool
) -> None:
    p, s = ("plugins[1]", "plugins[0]") if first else ("plugins[0]", "plugins[1]")
    want = key.format(P=f"{p}.parameters", S=f"{s}.parameters")
    with pytest.raises(ConfigError) as e:
        parse_config(_doc(producer, scorer, first=first))
    assert str(e.value).startswith(want), (str(e.value), want)


def test_a_consumer_of_the_approximate_match_naming_it_is_refused() -> None:
    doc = _doc({})
    doc["plugins"].append(
        {"type": "no-hit-lru-scorer", "parameters": {"prefixMatchInfoProducerName": PRODUCER}}
    )
    with pytest.raises(ConfigError, match=r"^plugins\[3\]\.parameters\.prefixMatchInfoProducerName: "):
        parse_config(doc)


def test_a_producer_no_scorer_reads_is_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    doc = _doc({})
    doc["plugins"][1] = {"type": "queue-scorer"}
    doc["schedulingProfiles"][0]["plugins"][0] = {"pluginRef": "queue-scorer"}
    parse_config(yaml.safe_load(yaml.safe_dump(doc)))
    assert f"plugins[0]: no prefix-cache-scorer names this {PRODUCER}" in caplog.text
