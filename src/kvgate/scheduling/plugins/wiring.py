"""The reference's data-layer and request-parser plugins, taken as configuration (qa27 Q4).

The reference EPP scrapes with a ``metrics-data-source`` and reads the page with a
``core-metrics-extractor`` (older: ``model-server-protocol-metrics``), wired in the config's ``data`` (or
``dataLayer``) section, and parses bodies with the ``parser`` section's plugin (``openai-parser``). kvgate
does the same work itself: its scraper reads each endpoint's ``/metrics`` with its engine's mapping
(``--engine`` / ``pools[].engine``, or the pod's engine-type label) and parses the OpenAI API. So these
plugins are accepted with their parameters checked; a setting that means what kvgate does anyway is
silent, one kvgate cannot honour is one WARNING line naming the keys (``config.picker.validate`` logs it).
They take no part in scheduling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from kvgate.datalayer.mappings import MAPPINGS, EngineMapping, Signal
from kvgate.datalayer.store import ENGINE_LABEL
from kvgate.scheduling.framework import ConfigError, Params, Plugin, PluginHandle
from kvgate.scheduling.registry import register

# The reference's engineConfigs keys (extractor/metrics there), each with the part of kvgate's mapping
# (datalayer/mappings.py) it names. A spec naming what kvgate's mapping for that engine reads asks for
# nothing kvgate does not do; it is compared with the mapping itself, not a copy of the reference's defaults.
_CORE_SPECS = {
    "queuedRequestsSpec": "waiting",
    "runningRequestsSpec": "running",
    "kvUsageSpec": "kv_usage",
}
# Optional: empty (or left out) is the reference's "not read" for an engine without it, which kvgate's
# reading anyway does no harm to.
_OPTIONAL_SPECS = {
    "loraSpec": "lora_info",
    "cacheInfoSpec": "cache_info",
    "cacheBlockSizeLabelName": "block_size_label",
    "cacheNumBlocksLabelName": "num_blocks_label",
    "cacheBlockSizeSpec": "block_size",
    "cacheNumBlocksSpec": "num_blocks",
}
_SPEC_KEYS = (*_CORE_SPECS, *_OPTIONAL_SPECS)
# The older model-server-protocol-metrics took the first five, flat.
_FLAT_KEYS = _SPEC_KEYS[:5]


def _spec(signal: Signal) -> str:
    """A signal as the reference writes a spec: ``name`` or ``name{label=value,...}``."""
    match = ",".join(f"{k}={v}" for k, v in signal.match)
    return f"{signal.names[0]}{{{match}}}" if match else signal.names[0]


def _reads(mapping: EngineMapping, key: str) -> frozenset[str]:
    """The spec values for ``key`` that name what ``mapping`` reads (a signal: any of its names)."""
    value = getattr(mapping, {**_CORE_SPECS, **_OPTIONAL_SPECS}[key])
    if isinstance(value, Signal):
        return frozenset({_spec(value), *(_spec(replace(value, names=(n,))) for n in value.names)})
    return frozenset({value} if value else ())


def _same_as_kvgate(engine: str, specs: Mapping[str, str]) -> bool:
    mapping = MAPPINGS.get(engine)
    if mapping is None:
        return False
    for key in _SPEC_KEYS:
        value = specs.get(key, "")
        if not value and key in _OPTIONAL_SPECS:
            continue
        if value not in _reads(mapping, key):
            return False
    return True


_NOT_SCRAPED = (
    "not applied: kvgate scrapes each endpoint's /metrics with its own mapping for the endpoint's engine "
    "(--engine / pools[].engine, else the pod's inference.networking.k8s.io/engine-type label)"
)


class Wiring(Plugin):
    """A reference plugin whose work kvgate does itself; ``role`` says which config section may name it."""

    role: ClassVar[str] = ""


def _warn_unhonoured(params: Params, keys: list[str], why: str) -> None:
    if keys:
        params.warnings.append(f"{params.path}: {', '.join(keys)} {why}")


@register("metrics-data-source")
class MetricsDataSource(Wiring):
    role = "data source"

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> MetricsDataSource:
        scheme = params.get_str("scheme", "http", choices=("http", "https"))
        path = params.get_str("path", "/metrics")
        params.get_bool("insecureSkipVerify", True)  # (http: nothing to verify; https: refused below)
        params.finish()
        off = [f"path {path!r}"] if path != "/metrics" else []
        if scheme == "https":
            off.append("scheme 'https'")
        _warn_unhonoured(
            params,
            off,
            "not applied: kvgate scrapes http://<endpoint>/metrics, or https:// verified against caFile "
            "when the pool's endpoints are given as https://host:port",
        )
        return cls(name, handle)


def _engine_configs(params: Params) -> list[str]:
    """Check ``engineConfigs`` ([{name, <spec keys>}]); the names of those asking for other than kvgate's
    mapping of that engine reads."""
    off: list[str] = []
    for i, entry in enumerate(params.get_list("engineConfigs")):
        path = f"{params.path}.engineConfigs[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{path}: must be a mapping, got {type(entry).__name__}")
        for key, value in entry.items():
            if key != "name" and key not in _SPEC_KEYS:
                raise ConfigError(f"{path}.{key}: unknown key (allowed: name, {', '.join(_SPEC_KEYS)})")
            if not isinstance(value, str):
                raise ConfigError(f"{path}.{key}: must be a string, got {value!r}")
        name = entry.get("name")
        if not name:
            raise ConfigError(f"{path}.name: required")
        if not _same_as_kvgate(str(name), entry):
            off.append(str(name))
    return off


def _extractor(cls: type[Plugin], name: str, params: Params, handle: PluginHandle, *, flat: bool) -> Any:
    label = params.get_str("engineLabelKey", ENGINE_LABEL)
    default = params.get_str("defaultEngine", "vllm")
    off = [f"engineConfigs {engine!r}" for engine in _engine_configs(params)]
    if flat:  # (the older plugin's one engine, its specs as parameters)
        specs = {k: params.get_str(k, "") for k in _FLAT_KEYS}
        off += [f"{k} {v!r}" for k, v in specs.items() if v and v not in _reads(MAPPINGS["vllm"], k)]
    params.finish()
    if label != ENGINE_LABEL:
        off.insert(0, f"engineLabelKey {label!r}")
    if default != "vllm":
        off.insert(0, f"defaultEngine {default!r}")
    _warn_unhonoured(params, off, _NOT_SCRAPED)
    return cls(name, handle)


@register("core-metrics-extractor")
class CoreMetricsExtractor(Wiring):
    role = "extractor"

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> CoreMetricsExtractor:
        return _extractor(cls, name, params, handle, flat=False)


@register("model-server-protocol-metrics")
class ModelServerProtocolMetrics(Wiring):
    """The reference's earlier name of ``core-metrics-extractor`` (its first releases: one engine's specs
    as parameters)."""

    role = "extractor"

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> ModelServerProtocolMetrics:
        return _extractor(cls, name, params, handle, flat=True)


@register("openai-parser")
class OpenAIParser(Wiring):
    """kvgate parses request bodies as the OpenAI API: what the reference's default parser does."""

    role = "parser"
