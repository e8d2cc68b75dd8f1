"""A schema-shaped fuzz of llm-d's ``precise-prefix-cache-scorer`` parameters, with an oracle on what loads
(review s28-rev-cfg28's last section, fixcfg28). cfg28's fuzz drew random key names at every level, so
nearly every example was an "unknown parameter" at the top: it never set a block size or a hash seed,
never reached a conflict, ``tokenizersPoolConfig`` or ``podDiscoveryConfig``. Here each key sits at its
place with a value of its type (now and then a refused one, an unknown key at some depth, or a conflict
with kvgate's own key), and the loaded scorer is checked against what the keys say: its block size, hash
seed, speculative TTL, events address, tokenizer; and a refused config names the key that refuses it.
Fails on main ca67a4cb (an unknown key under ``tokenizersPoolConfig`` / ``prefixStoreConfig`` loaded;
``modelName`` found in the local cache was read as ``auto``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvgate.config.director import build_director
from kvgate.config.picker import parse_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling import tokenize
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.plugins import precise_prefix
from kvgate.scheduling.plugins.precise_prefix import DEFAULT_SPECULATIVE_TTL, PrecisePrefixCacheScorer

INDEX = "fixcfg28fuzz"
P = "plugins[0].parameters"
CACHED_MODEL = "fuzz/cached"  # has a tokenizer.json in this module's Hugging Face cache
ABSENT_MODEL = "fuzz/absent"


@pytest.fixture(scope="module", autouse=True)
def _hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Hugging Face cache holding ``CACHED_MODEL``'s tokenizer, and no other cache in reach."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    home = tmp_path_factory.mktemp("hf")
    snap = home / "hub" / ("models--" + CACHED_MODEL.replace("/", "--")) / "snapshots" / "abc"
    snap.mkdir(parents=True)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(snap / "tokenizer.json"))
    saved = {k: os.environ.get(k) for k in ("HOME", "HF_HUB_CACHE", "HF_HOME")}
    os.environ.update(HOME=str(home), HF_HUB_CACHE=str(home / "hub"))
    os.environ.pop("HF_HOME", None)
    try:
        yield snap / "tokenizer.json"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        precise_prefix._INDEXES.pop(INDEX, None)


def _maybe(draw: st.DrawFn, strategy: st.SearchStrategy[Any], p: float = 0.5) -> Any:
    """``strategy``'s value about ``p`` of the time (hypothesis leans to small draws: those mean absent)."""
    return draw(strategy) if draw(st.integers(0, 99)) >= 100 - round(100 * p) else None


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


@st.composite
def _token_processor(draw: st.DrawFn) -> dict[str, Any]:
    tp: dict[str, Any] = {}
    _put(tp, "blockSizeTokens", _maybe(draw, st.sampled_from([0, 16, 32, 64])))
    _put(tp, "blockSize", _maybe(draw, st.sampled_from([0, 16, 64])))
    _put(tp, "hashSeed", _maybe(draw, st.sampled_from(["", "42", "7"])))
    return tp


@st.composite
def _layout(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {}
    _put(params, "tokenProcessorConfig", _maybe(draw, _token_processor()))
    idx: dict[str, Any] = {}
    _put(idx, "tokenProcessorConfig", _maybe(draw, _token_processor(), 0.3))
    kb: dict[str, Any] = {}
    _put(kb, "enableMetrics", _maybe(draw, st.booleans()))
    _put(kb, "inMemoryConfig", _maybe(draw, st.just({"size": 1000}), 0.2))
    _put(kb, "redisConfig", _maybe(draw, st.just({"address": "redis://r:6379"}), 0.05))
    _put(idx, "kvBlockIndexConfig", kb or _maybe(draw, st.just({}), 0.2))
    tok: dict[str, Any] = {}
    _put(tok, "modelName", _maybe(draw, st.sampled_from([CACHED_MODEL, ABSENT_MODEL])))
    _put(tok, "workersCount", _maybe(draw, st.integers(1, 8), 0.3))
    _put(tok, "minPrefixOverlapRatio", _maybe(draw, st.sampled_from([0.0, 0.8, 1.0]), 0.2))
    _put(tok, "hf", _maybe(draw, st.just({"enabled": True}), 0.2))
    _put(tok, "local", _maybe(draw, st.just({"autoDiscoveryDir": "/mnt/models"}), 0.2))
    _put(idx, "tokenizersPoolConfig", tok or None)
    _put(idx, "prefixStoreConfig", _maybe(draw, st.just({"cacheSize": 500000, "blockSize": 256}), 0.2))
    _put(idx, "kvCacheBackendConfigs", _maybe(draw, st.just([{"name": "gpu"}]), 0.1))
    _put(params, "indexerConfig", idx or None)
    ev: dict[str, Any] = {}
    _put(ev, "topicFilter", _maybe(draw, st.sampled_from(["kv@", "", "other@"]), 0.3))
    _put(ev, "concurrency", _maybe(draw, st.integers(1, 8), 0.3))
    _put(ev, "discoverPods", _maybe(draw, st.booleans()))
    _put(ev, "engineType", _maybe(draw, st.sampled_from(["vllm", "vllm", "sglang"]), 0.2))
    _put(ev, "zmqEndpoint", _maybe(draw, st.just("tcp://*:5557"), 0.05))
    pod: dict[str, Any] = {}
    _put(pod, "socketPort", _maybe(draw, st.sampled_from([5556, 5557, 6000])))
    _put(pod, "replaySocketPort", _maybe(draw, st.sampled_from([0, 5558]), 0.3))
    _put(ev, "podDiscoveryConfig", pod or None)
    _put(params, "kvEventsConfig", ev or None)
    _put(params, "speculativeIndexing", _maybe(draw, st.booleans()))
    # kvgate's own keys beside them (an alias, or a conflict naming both)
    _put(params, "blockSize", _maybe(draw, st.sampled_from([16, 64]), 0.2))
    _put(params, "hashSeed", _maybe(draw, st.sampled_from(["42", "9"]), 0.1))
    _put(params, "speculativeTTL", _maybe(draw, st.sampled_from(["0s", "5s"]), 0.1))
    _put(params, "eventsPortOffset", _maybe(draw, st.sampled_from([1, 5557]), 0.05))
    if draw(st.integers(0, 99)) >= 85:  # an unknown key in one of the mappings drawn
        maps = _mappings(params, P)
        _, mapping = draw(st.sampled_from(maps))
        mapping["bogusKey"] = 1
    return params


def _mappings(d: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every mapping of ``d`` kvgate checks key by key (the ``hf`` / ``local`` / ``uds`` backends and the
    index's backend configs are llm-d's, accepted whole), with its path."""
    out = [(path, d)]
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("hf", "local", "uds", "inMemoryConfig", "redisConfig"):
            out += _mappings(v, f"{path}.{k}")
    return out


def _oracle(params: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The refusals the keys call for (each a key path the error may name), and, where none, the settings
    the scorer must load with."""
    refused: list[str] = []
    idx = params.get("indexerConfig", {})
    ev = params.get("kvEventsConfig", {})
    if "redisConfig" in idx.get("kvBlockIndexConfig", {}):
        refused.append(f"{P}.indexerConfig.kvBlockIndexConfig.redisConfig")
    if ev.get("zmqEndpoint"):
        refused.append(f"{P}.kvEventsConfig.zmqEndpoint")
    if ev.get("engineType", "vllm") != "vllm":
        refused.append(f"{P}.kvEventsConfig.engineType")
    # block size / hash seed from each token processor (the top one, then the indexer's), and kvgate's own
    blocks: list[tuple[int, str]] = []
    seeds: list[tuple[str | None, str]] = []
    for tp, at in ((params.get("tokenProcessorConfig"), f"{P}.tokenProcessorConfig"),
                   (idx.get("tokenProcessorConfig"), f"{P}.indexerConfig.tokenProcessorConfig")):  # fmt: skip
        if tp is None:
            continue
        size = tp.get("blockSizeTokens", 0) or tp.get("blockSize", 0)
        if size:
            blocks.append((size, at))
        if "hashSeed" in tp:
            seeds.append((tp["hashSeed"] or None, at))
    if len({b for b, _ in blocks}) > 1:
        refused.append(blocks[1][1])
    if len({s for s, _ in seeds}) > 1:
        refused.append(seeds[1][1])
    want: dict[str, Any] = {"block": 16, "seed": None, "ttl": DEFAULT_SPECULATIVE_TTL}
    if blocks:
        want["block"] = blocks[0][0]
        if "blockSize" in params and params["blockSize"] != blocks[0][0]:
            refused += [at for _, at in blocks]  # (the one read last names it)
    elif "blockSize" in params:
        want["block"] = params["blockSize"]
    if seeds:
        want["seed"] = seeds[0][0]
        if "hashSeed" in params and params["hashSeed"] != seeds[0][0]:
            refused += [at for _, at in seeds]
    elif "hashSeed" in params:
        want["seed"] = params["hashSeed"]
    if params.get("speculativeIndexing") is False:
        want["ttl"] = 0.0
        if "speculativeTTL" in params and params["speculativeTTL"] != "0s":
            refused.append(f"{P}.speculativeIndexing")
    elif params.get("speculativeTTL") == "0s":
        want["ttl"] = 0.0
    elif params.get("speculativeTTL") == "5s":
        want["ttl"] = 5.0
    pod = ev.get("podDiscoveryConfig", {})
    if "kvEventsConfig" in params and ev.get("discoverPods", True):
        want["events"] = pod.get("socketPort", 5557)
        if "eventsPortOffset" in params:  # (an offset beside an absolute port: refused, whatever the values)
            refused.append(f"{P}.kvEventsConfig")
    model = idx.get("tokenizersPoolConfig", {}).get("modelName")
    want["tokenizer"] = None if model is None else (tokenize.AUTO if model == ABSENT_MODEL else "cached")
    return refused, want


def _scorer(params: dict[str, Any]) -> PrecisePrefixCacheScorer:
    doc = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": "precise-prefix-cache-scorer", "parameters": {**params, "indexName": INDEX}}],
    }
    cfg = parse_config(doc, announce=False)
    director = build_director(cfg, EndpointStore([make_endpoint("10.0.0.5:8000")]), clock=lambda: 0.0, seed=0)
    (scorer,) = (p for p in director.handle.plugins.values() if isinstance(p, PrecisePrefixCacheScorer))
    return scorer


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_layout())
def test_fuzzed_llmd_layouts_load_as_their_keys_say(params: dict[str, Any]) -> None:
    precise_prefix._INDEXES.pop(INDEX, None)  # (each example its own index: block sizes differ)
    bogus = [f"{path}.bogusKey" for path, m in _mappings(params, P) if "bogusKey" in m]
    refused, want = _oracle(params)
    try:
        scorer = _scorer(params)
    except ConfigError as e:
        msg = str(e)
        event(f"refused: {msg.split(':')[0][len(P) :]}")  # (what it reached: --hypothesis-show-statistics)
        assert msg.startswith(P), msg
        assert bogus or refused, f"refused, but nothing called for it: {msg}"
        if bogus and not refused:
            assert msg.startswith(bogus[0]), msg
        else:
            assert any(msg.startswith(r) for r in refused + bogus), (msg, refused, bogus)
        return
    event("loaded")
    assert not bogus and not refused, (bogus, refused)
    assert scorer.default_block_size == want["block"]
    assert scorer.hash_seed == want["seed"]
    assert scorer.speculative_ttl == want["ttl"]
    if "events" in want:
        address = scorer.event_source(make_endpoint("10.0.0.5:8000"))
        assert address is not None and address[0] == f"tcp://10.0.0.5:{want['events']}"
    got = scorer._tokenizer.setting
    if want["tokenizer"] == "cached":
        assert got is not None and got.endswith("tokenizer.json") and CACHED_MODEL.replace("/", "--") in got
    else:
        assert got == want["tokenizer"], got
