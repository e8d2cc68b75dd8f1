"""llm-d's ``precise-prefix-cache-scorer`` parameters, read for kvgate's scorer of the same type (cfg28).

llm-d (llm-d-inference-scheduler ``pkg/plugins/scorer/precise_prefix_cache.go``, with llm-d-kv-cache's
configs) nests them: ``tokenProcessorConfig {blockSize | blockSizeTokens, hashSeed}`` (earlier under
``indexerConfig``), ``indexerConfig {kvBlockIndexConfig, tokenizersPoolConfig, kvCacheBackendConfigs}``,
``kvEventsConfig {topicFilter, concurrency, engineType, discoverPods, podDiscoveryConfig {socketPort,
replaySocketPort, podLabelSelector, podNamespace}, zmqEndpoint}``, ``speculativeIndexing``. Each is taken
as the kvgate setting that does the same (the block size in tokens, the hash seed, the events port, the
tokenizer, the speculative credit), a setting that changes nothing kvgate does is accepted, one kvgate
cannot do is a ConfigError naming the key, and one it does differently is one WARNING line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvgate.scheduling.framework import ConfigError, Params, PluginHandle
from kvgate.scheduling.plugins.wiring import Wiring
from kvgate.scheduling.registry import register
from kvgate.scheduling.tokenize import AUTO, LOOKUP_ERRORS, find_for_model, load

# kvgate's own key for each setting the llm-d layout can give (a conflict names both).
KVGATE_KEYS = {
    "block_size": "blockSize",
    "hash_seed": "hashSeed",
    "events_port": "eventsPortOffset",
    "replay_port": "replayPortOffset",
    "tokenizer": "tokenizer",
    "speculative_ttl": "speculativeTTL",
}
LAYOUT_KEYS = ("tokenProcessorConfig", "indexerConfig", "kvEventsConfig", "speculativeIndexing")
# llm-d-kv-cache's in-memory index settings and metrics: kvgate's index is bounded by its own
# capacityPerEndpoint; its metrics are always on.
_INDEX_SILENT = ("enableMetrics", "metricsLoggingInterval")
# (``maxPrefixTokensToMatch`` is taken too, warned: not applied there, as llm-d-router)
_INDEX_WARNED = ("inMemoryConfig", "costAwareMemoryConfig")
_INDEX_REFUSED = ("redisConfig", "valkeyConfig")  # an external index kvgate does not have
_INDEXER_KEYS = (
    "tokenProcessorConfig",
    "kvBlockIndexConfig",
    "tokenizersPoolConfig",
    "kvCacheBackendConfigs",
    "prefixStoreConfig",
)
DEFAULT_SOCKET_PORT = 5557  # llm-d-kv-cache's podDiscoveryConfig default
# llm-d-kv-cache's tokenization pool keys (``tokenization.Config``: ``modelName``, ``workersCount``, the
# ``local`` / ``uds`` / ``hf`` backends; earlier ``minPrefixOverlapRatio``): how llm-d loads a tokenizer,
# accepted (kvgate loads ``modelName``'s from the local Hugging Face cache itself).
_TOKENIZER_POOL_KEYS = ("modelName", "workersCount", "minPrefixOverlapRatio", "local", "uds", "hf")
# llm-d-kv-cache's earlier prefix store (``LRUStoreConfig``): kvgate has its own token cache.
_PREFIX_STORE_KEYS = ("cacheSize", "blockSize")


def _finish(p: Params, known: tuple[str, ...]) -> None:
    """``Params.finish`` for a mapping whose keys were taken out (popped) rather than read."""
    if unknown := sorted(set(p.raw)):
        raise ConfigError(f"{p.path}.{unknown[0]}: unknown parameter (known: {sorted(known)})")


def _nested(params: Params, raw: Any, key: str) -> Params:
    path = f"{params.path}.{key}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: must be a mapping, got {type(raw).__name__}")
    return Params(raw, path)


def _mapping_or_none(p: Params, key: str) -> Mapping[str, Any] | None:
    """``p``'s ``key`` read as a mapping taken whole (or None when left out)."""
    v = p._get(key)
    if v is not None and not isinstance(v, Mapping):
        raise ConfigError(f"{p.path}.{key}: must be a mapping, got {type(v).__name__}")
    return v


def _token_processor(tp: Params, out: dict[str, tuple[Any, str]]) -> None:
    """``{blockSize, blockSizeTokens, hashSeed}``: both in tokens (llm-d-router renamed ``blockSize``);
    0 is unset."""
    tokens = tp.get_int("blockSizeTokens", 0, min=0)
    legacy = tp.get_int("blockSize", 0, min=0)
    seed = tp.get_str("hashSeed", "")
    tp.finish()
    if tokens or legacy:
        key = "blockSizeTokens" if tokens else "blockSize"
        _put(out, "block_size", tokens or legacy, f"{tp.path}.{key}")
    if "hashSeed" in tp.raw:
        _put(out, "hash_seed", seed or None, f"{tp.path}.hashSeed")


def _put(out: dict[str, tuple[Any, str]], name: str, value: Any, path: str) -> None:
    if name in out and out[name][0] != value:
        raise ConfigError(f"{path}: {value!r} conflicts with {out[name][1]} ({out[name][0]!r})")
    out[name] = (value, path)


def llmd_settings(params: Params) -> dict[str, tuple[Any, str]]:
    """Take llm-d's nested keys out of ``params`` (so ``finish`` does not see them); the kvgate settings
    they give, each with the path of the key that gave it."""
    out: dict[str, tuple[Any, str]] = {}
    if params.raw.get("checkpoint") is not None:  # (llm-d-router's producer, newest)
        raise ConfigError(
            f"{params.path}.checkpoint: not supported: kvgate's KV-event index is not persisted (a restart "
            "catches up from each engine's replay)"
        )
    if params.raw.get("speculativeTTL") == "":  # (llm-d's Go string: empty is its default, kvgate's too)
        params.raw.pop("speculativeTTL")
    raw = {k: params.raw.pop(k) for k in LAYOUT_KEYS if params.raw.get(k) is not None}
    if "tokenProcessorConfig" in raw:
        _token_processor(_nested(params, raw["tokenProcessorConfig"], "tokenProcessorConfig"), out)
    if "indexerConfig" in raw:
        _indexer(params, _nested(params, raw["indexerConfig"], "indexerConfig"), out)
    if "kvEventsConfig" in raw:
        _kv_events(params, _nested(params, raw["kvEventsConfig"], "kvEventsConfig"), out)
    if "speculativeIndexing" in raw:
        on = raw["speculativeIndexing"]
        if not isinstance(on, bool):
            raise ConfigError(f"{params.path}.speculativeIndexing: must be true or false, got {on!r}")
        if not on:  # (true: kvgate's dispatch-time credit, speculativeTTL's)
            _put(out, "speculative_ttl", 0.0, f"{params.path}.speculativeIndexing")
    return out


def _indexer(params: Params, idx: Params, out: dict[str, tuple[Any, str]]) -> None:
    tp = idx.raw.pop("tokenProcessorConfig", None)  # (llm-d-kv-cache's earlier placement)
    if tp is not None:
        _token_processor(_nested(idx, tp, "tokenProcessorConfig"), out)
    block = idx.raw.pop("kvBlockIndexConfig", None)
    if block is not None:
        kb = _nested(idx, block, "kvBlockIndexConfig")
        for key in _INDEX_REFUSED:
            if kb.raw.get(key) is not None:
                raise ConfigError(
                    f"{kb.path}.{key}: not supported: kvgate's block index is in memory, in the gateway "
                    "(capacityPerEndpoint bounds it)"
                )
            kb.raw.pop(key, None)
        warned = [k for k in _INDEX_WARNED if kb.raw.pop(k, None) is not None]
        if kb.raw.pop("maxPrefixTokensToMatch", None) is not None:
            # (llm-d-router's sim-epp-no-hit-lru.yaml writes it here; its index config has no such field,
            # which Go's decoder skips: a cap there caps nothing)
            params.warn(
                "indexerConfig.kvBlockIndexConfig.maxPrefixTokensToMatch",
                "not applied, as llm-d-router does not apply it there (its index configuration has no such "
                "key); to cap the match write maxPrefixTokensToMatch (or maxPrefixBlocksToMatch) among "
                "the plugin's own parameters",
            )
        for key in _INDEX_SILENT:
            kb.raw.pop(key, None)
        _finish(kb, (*_INDEX_SILENT, *_INDEX_WARNED, *_INDEX_REFUSED, "maxPrefixTokensToMatch"))
        if warned:
            params.warn(
                f"indexerConfig.kvBlockIndexConfig.{warned[0]}",
                "not applied: kvgate's index keeps capacityPerEndpoint blocks per endpoint",
            )
    pool = idx.raw.pop("tokenizersPoolConfig", None)
    if pool is not None:
        _tokenizers_pool(params, _nested(idx, pool, "tokenizersPoolConfig"), out)
    if idx.raw.pop("kvCacheBackendConfigs", None) is not None:
        params.warn(
            "indexerConfig.kvCacheBackendConfigs",
            "not applied: kvgate scores the blocks each engine reports, one tier",
        )
    store = idx.raw.pop(
        "prefixStoreConfig", None
    )  # (llm-d-kv-cache's earlier token cache: kvgate has its own)
    if store is not None:
        ps = _nested(idx, store, "prefixStoreConfig")
        for key in _PREFIX_STORE_KEYS:
            ps.get_int(key, 0, min=0)
        ps.finish()
    _finish(idx, _INDEXER_KEYS)


def _tokenizers_pool(params: Params, tok: Params, out: dict[str, tuple[Any, str]]) -> None:
    """``modelName``: that model's ``tokenizer.json`` from the local Hugging Face cache (or a local
    directory), found at load, as llm-d tokenizes every request with it whatever the request's model name
    (a served-model-name alias, a LoRA); not found: ``tokenizer: auto`` (each request's model name looked
    up locally) and one WARNING line (review s28-rev-cfg28 F4). Found but unloadable (a truncated download,
    a format this ``tokenizers`` cannot read): ``auto`` too, the WARNING saying why; a file the user never
    named does not refuse the config (review s28-rev-fixes28a F3). The load is cached per path
    (``tokenize.load``): the build that follows reads the same tokenizer."""
    model = tok.get_str("modelName", "")
    tok.get_int("workersCount", 0, min=0)
    tok.get_float("minPrefixOverlapRatio", 0.0, min=0.0, max=1.0)
    for key in ("local", "uds", "hf"):  # (how llm-d finds the tokenizer: accepted whole)
        _mapping_or_none(tok, key)
    tok.finish()
    if not model:
        return
    tokenizer, why = local_tokenizer(model)
    _put(out, "tokenizer", tokenizer, f"{tok.path}.modelName")
    if why is not None:
        params.warn(
            "indexerConfig.tokenizersPoolConfig.modelName",
            f"{why}: read as tokenizer: auto (each request's model name looked up locally), unless "
            "tokenizer is set",
        )


def _kv_events(params: Params, ev: Params, out: dict[str, tuple[Any, str]]) -> None:
    if ev.raw.get("zmqEndpoint"):
        # llm-d's "global socket": one socket every engine publishes to, each told apart by its topic
        # (``kv@<pod>@<model>``). kvgate keeps one subscription (and one sequence) per endpoint.
        raise ConfigError(
            f"{ev.path}.zmqEndpoint: not supported: llm-d's one socket for every engine's events (told "
            "apart by topic); kvgate subscribes to each endpoint's own events "
            "(podDiscoveryConfig.socketPort, eventsPortOffset or the kvgate.io/kv-events label; eventsBind: "
            "true where the engine connects)"
        )
    ev.raw.pop("zmqEndpoint", None)
    engine = ev.get_str("engineType", "vllm")
    if engine != "vllm":
        raise ConfigError(
            f"{ev.path}.engineType: not supported: kvgate reads vLLM's KV events, got {engine!r}"
        )
    topic = ev.get_str("topicFilter", "kv@")
    ev.get_int("concurrency", 4, min=1)  # (kvgate's intake is its own)
    ev.get_bool("tracing", False)
    discover = ev.get_bool("discoverPods", True)  # (llm-d-kv-cache's default)
    pod = ev.raw.pop("podDiscoveryConfig", None)
    ev.finish()
    if topic not in ("", "kv@"):
        params.warn("kvEventsConfig.topicFilter", f"not applied: kvgate reads every topic, not {topic!r}")
    port, replay = DEFAULT_SOCKET_PORT, 0
    if pod is not None:
        pd = _nested(ev, pod, "podDiscoveryConfig")
        port = pd.get_int("socketPort", DEFAULT_SOCKET_PORT, min=1, max=65535)
        replay = pd.get_int("replaySocketPort", 0, min=0, max=65535)
        pod_engine = pd.get_str("engineType", "vllm")
        if pod_engine != "vllm":
            raise ConfigError(f"{pd.path}.engineType: not supported: kvgate reads vLLM's KV events")
        picked = [k for k in ("podLabelSelector", "podNamespace") if pd.get_str(k, "")]
        pd.finish()
        if picked:
            params.warn(
                f"kvEventsConfig.podDiscoveryConfig.{picked[0]}",
                "not applied: kvgate subscribes to the pool's own endpoints",
            )
    if discover:
        where = f"{ev.path}.podDiscoveryConfig.socketPort" if pod is not None else f"{ev.path}.discoverPods"
        _put(out, "events_port", port, where)
        if replay:
            _put(out, "replay_port", replay, f"{ev.path}.podDiscoveryConfig.replaySocketPort")


def local_tokenizer(model: str) -> tuple[str, str | None]:
    """``model``'s ``tokenizer.json`` from the local Hugging Face cache (or a local directory), as a
    ``tokenizer`` value, else ``auto`` and why (each request's model name looked up locally)."""
    try:
        found = find_for_model(model)
    except LOOKUP_ERRORS as e:  # (a name no file can have: a miss, as an absent one; never a crash)
        return AUTO, f"{model!r} cannot be looked up in the local Hugging Face cache ({e})"
    if found is None:
        return (
            AUTO,
            f"{model!r} has no tokenizer.json in the local Hugging Face cache (kvgate downloads none)",
        )
    try:
        load(found)
    except (OSError, ValueError) as e:
        return AUTO, f"{model!r}'s tokenizer.json in the local Hugging Face cache cannot be loaded ({e})"
    return str(found), None


TOKEN_PRODUCER = "token-producer"


@register(TOKEN_PRODUCER)
class TokenProducer(Wiring):
    """llm-d-router's ``token-producer``: tokenizes each request for its precise producer, through the
    model server (``vllm.url``'s ``/render``) or a tokenizer sidecar (``uds``). kvgate's precise scorer
    tokenizes itself, with ``modelName``'s local ``tokenizer.json`` (``config.picker`` gives it to a scorer
    built from a ``precise-prefix-cache-producer`` that names no tokenizer of its own; not found:
    ``tokenizer: auto`` and one WARNING line). How llm-d reaches its tokenizer is accepted, not used."""

    role = "data producer"

    def __init__(self, name: str, handle: PluginHandle, model: str = "") -> None:
        super().__init__(name, handle)
        self.model = model

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> TokenProducer:
        model = params.get_str("modelName", "")
        params.get_str("backend", "")
        for key in ("vllm", "uds", "hf", "local"):
            _mapping_or_none(params, key)
        params.finish()
        if model and (why := local_tokenizer(model)[1]) is not None:
            params.warn("modelName", f"{why}: the precise scorer reads tokenizer: auto (each request's model "
                        "name looked up locally)")  # fmt: skip
        return cls(name, handle, model)


@register("endpoint-notification-source")
class EndpointNotificationSource(Wiring):
    """llm-d-router's source of endpoint additions and removals (its precise producer's subscriptions
    follow them): kvgate's KV-event subscriptions follow the pool's endpoint store themselves."""

    role = "data source"
