"""Load ``EndpointPickerConfig`` YAML exactly as users write it for the reference EPP.

Structure errors, unknown plugin types, bad parameters and dangling ``pluginRef``s fail here, at load,
with a ``ConfigError`` naming the key (``plugins[1].parameters.blockSize: ...``). Parameters are
validated by building each plugin once with a store-less handle, so the rules live in one place: the
plugin's own ``create``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvgate import yamlload
from kvgate.datalayer.scrape_source import ScrapeSource
from kvgate.flowcontrol.config import FEATURE_GATE, parse_flow_control
from kvgate.flowcontrol.saturation import SaturationDetector
from kvgate.scheduling import registry
from kvgate.scheduling.framework import (
    ConfigError,
    Params,
    Picker,
    PluginHandle,
    ProfileHandler,
    as_finite,
    parse_duration,
)
from kvgate.scheduling.plugins import precise_prefix
from kvgate.scheduling.plugins.affinity_gate import DEFAULT_THRESHOLD, KVGATE_KEYS, REFERENCE_KEYS
from kvgate.scheduling.plugins.precise_llmd import TOKEN_PRODUCER, local_tokenizer
from kvgate.scheduling.plugins.precise_prefix import PRODUCER as PRECISE_PRODUCER
from kvgate.scheduling.plugins.prefix_cache import UsesPrefixPlugin
from kvgate.scheduling.plugins.wiring import Wiring
from kvgate.scheduling.tokenize import AUTO

log = logging.getLogger(__name__)

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
# llm-d-router's group for the same document (its guides and Helm values write v1alpha1, its newest samples
# v1); the fields are the same.
LLMD_API_VERSIONS = ("llm-d.ai/v1alpha1", "llm-d.ai/v1")
KIND = "EndpointPickerConfig"
TOP_KEYS = (
    "apiVersion",
    "kind",
    "plugins",
    "schedulingProfiles",
    "featureGates",
    "saturationDetector",
    "data",
    "dataLayer",
    "flowControl",
    "parser",
    "requestHandler",
)
# Inline saturationDetector keys (the reference's utilization detector parameters).
_DETECTOR_INLINE = (
    "queueDepthThreshold",
    "kvCacheUtilThreshold",
    "metricsStalenessThreshold",
    "ownLoadStalenessThreshold",  # kvgate (flowcontrol/saturation.py)
)

__all__ = ["API_VERSION", "KIND", "ConfigError", "EndpointPickerConfig", "load_config", "parse_config"]


# The feature gates kvgate implements; any other name is a config error, as the reference's unregistered ones.
FEATURE_GATES = frozenset({FEATURE_GATE})
# Gates the reference registers (by version) for features kvgate does not have: turned on, refused as not
# supported (off, accepted).
_UNSUPPORTED_GATES = frozenset({"dataLayer", "prepareDataPlugins", "enableLegacyMetrics"})
# Go's strconv.ParseBool, which the reference's ``name=value`` form is read with.
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}


def _feature_gate(entry: str, path: str) -> tuple[str, bool]:
    """``name`` or ``name=bool`` -> (name, on). A gate nobody registered is an error, as the reference's
    ``validateFeatureGates``, so a typo (``flowcontrol``) cannot leave a feature silently off (review s18-qa
    M2); a reference gate for a feature kvgate lacks is refused when turned on (review s18-gw L1)."""
    name, eq, value = entry.partition("=")
    on = _GO_BOOLS.get(value) if eq else True
    if on is None:
        raise ConfigError(f"{path}: {entry!r}: expected {name}=true or {name}=false")
    if name in _UNSUPPORTED_GATES:
        if on:
            raise ConfigError(f"{path}: feature gate {name!r} is not supported by kvgate; remove it")
    elif name not in FEATURE_GATES:
        known = ", ".join(sorted(FEATURE_GATES))
        raise ConfigError(f"{path}: unknown feature gate {name!r} (known: {known})")
    return name, on


@dataclass(slots=True)
class PluginSpec:
    name: str
    type: str
    parameters: dict[str, Any]
    path: str  # where it was declared, for error messages

    def params(self) -> Params:
        return Params(self.parameters, f"{self.path}.parameters")


@dataclass(slots=True)
class ProfileRef:
    plugin_ref: str
    weight: float | None
    path: str


@dataclass(slots=True)
class ProfileSpec:
    name: str
    plugins: list[ProfileRef]
    path: str


@dataclass(slots=True)
class EndpointPickerConfig:
    plugins: list[PluginSpec] = field(default_factory=list)
    profiles: list[ProfileSpec] = field(default_factory=list)
    feature_gates: list[str] = field(default_factory=list)
    # The detector as a plugin spec (from saturationDetector or the default utilization detector).
    saturation_detector: PluginSpec | None = None
    data_layer: dict[str, Any] = field(default_factory=dict)
    flow_control: dict[str, Any] = field(default_factory=dict)
    parser: dict[str, Any] = field(default_factory=dict)
    request_handler: dict[str, Any] = field(default_factory=dict)
    # The request parsers' plugin types in the order a path is matched (``_parser_chain``); empty: the
    # default, ``openai-parser`` (``kvgate epp`` routes by it: ``extproc.parsers``).
    parsers: list[str] = field(default_factory=list)
    # What the sections outside ``plugins`` ask that kvgate does not do, one line each (logged with the
    # plugins' own, by ``validate``).
    warnings: list[str] = field(default_factory=list)
    name: str = "custom"  # a policy name, or the file it came from

    def plugin(self, name: str) -> PluginSpec | None:
        return next((p for p in self.plugins if p.name == name), None)

    def plugin_types(self) -> dict[str, str]:
        """Each declared plugin's type by its name (what flow control's ``...PolicyRef`` may name)."""
        return {p.name: p.type for p in self.plugins}


def _mapping(v: Any, path: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{path}: must be a mapping, got {type(v).__name__}")
    return dict(v)


def _list(v: Any, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ConfigError(f"{path}: must be a list, got {type(v).__name__}")
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}: must be a non-empty string, got {v!r}")
    return v


def _check_keys(d: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(
                f"{path}.{k}: unknown key (allowed: {', '.join(allowed)})" if path else f"{k}: unknown key"
            )


def _plugin(raw: Any, path: str) -> PluginSpec:
    d = _mapping(raw, path)
    _check_keys(d, ("name", "type", "parameters"), path)
    if "type" not in d:
        raise ConfigError(f"{path}.type: required")
    ptype = _str(d["type"], f"{path}.type")
    name = _str(d.get("name", ptype), f"{path}.name")
    cls = registry.get(ptype)
    if cls is None:
        raise ConfigError(
            f"{path}.type: unknown plugin type {ptype!r} (known: {', '.join(registry.types())})"
        )
    return PluginSpec(name, ptype, _mapping(d.get("parameters"), f"{path}.parameters"), path)


# The reference's inline ``saturationDetector`` (GIE's ``buildSaturationConfig``) takes a value only in
# these ranges and its default otherwise, never an error: 0 is Go's zero value (unset; a Go-marshalled
# config writes ``metricsStalenessThreshold: 0s``), read by kvgate as "0 s: always stale" until review
# qa36a F2. The ``utilization-detector`` plugin's parameters refuse such values, as the reference's do.
_INLINE_RANGES: dict[str, tuple[Callable[[float], bool], str, str]] = {
    "queueDepthThreshold": (lambda v: v > 0, "> 0", "5"),
    "kvCacheUtilThreshold": (lambda v: 0 < v < 1, "in (0, 1)", "0.8"),
    "metricsStalenessThreshold": (lambda v: v > 0, "> 0", "200ms"),
}


def _inline_detector(d: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The inline parameters with each value the reference would replace left out (its default applies):
    0 silently (unset), any other one with a WARNING line naming the key. What is no finite number is
    left for the detector's own error naming the key."""
    out = dict(d)
    for key, (ok, where, default) in _INLINE_RANGES.items():
        raw = d.get(key)
        v: Any = None
        if isinstance(raw, str) and key == "metricsStalenessThreshold":
            v = parse_duration(raw)
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            v = raw
        if v is None or as_finite(v) is None or ok(v):
            continue
        del out[key]
        if v != 0:
            warnings.append(
                f"saturationDetector.{key}: {raw!r} is not {where}: its default {default} applies, as in the "
                "reference EPP (which replaces such a value)"
            )
    return out


def _detector(raw: Any, plugins: list[PluginSpec], warnings: list[str]) -> PluginSpec:
    path = "saturationDetector"
    d = _mapping(raw, path)
    if "pluginRef" in d:
        _check_keys(d, ("pluginRef",), path)
        ref = _str(d["pluginRef"], f"{path}.pluginRef")
        spec = next((p for p in plugins if p.name == ref), None)
        if spec is None:
            raise ConfigError(f"{path}.pluginRef: no plugin named {ref!r}")
        return spec
    if "type" in d:
        return _plugin(d, path)
    _check_keys(d, _DETECTOR_INLINE, path)
    return PluginSpec("utilization-detector", "utilization-detector", _inline_detector(d, warnings), path)


def parse_config(doc: Any, *, name: str = "custom", announce: bool = True) -> EndpointPickerConfig:
    """Validate a decoded YAML document into an ``EndpointPickerConfig``. ``announce``: log what it warns of
    (``validate``); False where the same document was loaded (and said) before: a gateway reparses a pool's
    picker to compare or lay it out (review s27-rev-fixes27a F1)."""
    d = _mapping(doc, "config")
    _check_keys(d, TOP_KEYS, "")
    if d.get("apiVersion", API_VERSION) not in (API_VERSION, *LLMD_API_VERSIONS):
        want = " or ".join(repr(v) for v in (API_VERSION, *LLMD_API_VERSIONS))
        raise ConfigError(f"apiVersion: expected {want}, got {d.get('apiVersion')!r}")
    if d.get("kind", KIND) != KIND:
        raise ConfigError(f"kind: expected {KIND!r}, got {d.get('kind')!r}")
    plugins = [_plugin(p, f"plugins[{i}]") for i, p in enumerate(_list(d.get("plugins"), "plugins"))]
    sources = [p for p in plugins if p.type == "metrics-data-source"]
    if len(sources) > 1:  # (one scrape of each endpoint; the reference's would scrape twice)
        raise ConfigError(
            f"{sources[1].path}.type: a second metrics-data-source ({sources[0].path} is one): kvgate "
            "scrapes each endpoint once, with one source's settings"
        )
    seen: dict[str, str] = {}
    for p in plugins:
        if p.name in seen:
            raise ConfigError(f"{p.path}.name: duplicate plugin name {p.name!r} (also {seen[p.name]})")
        seen[p.name] = p.path
    if d.get("apiVersion") in LLMD_API_VERSIONS:
        _llmd_affinity_defaults(plugins)
    warnings: list[str] = _precise_producers(plugins)
    _prefix_producers(plugins)
    _load_producer_refs(plugins)
    profiles: list[ProfileSpec] = []
    for i, raw in enumerate(_list(d.get("schedulingProfiles"), "schedulingProfiles")):
        path = f"schedulingProfiles[{i}]"
        pd = _mapping(raw, path)
        _check_keys(pd, ("name", "plugins"), path)
        refs: list[ProfileRef] = []
        for j, rr in enumerate(_list(pd.get("plugins"), f"{path}.plugins")):
            rpath = f"{path}.plugins[{j}]"
            rd = _mapping(rr, rpath)
            _check_keys(rd, ("pluginRef", "weight"), rpath)
            if "pluginRef" not in rd:
                raise ConfigError(f"{rpath}.pluginRef: required")
            ref = _str(rd["pluginRef"], f"{rpath}.pluginRef")
            if ref not in seen:
                raise ConfigError(f"{rpath}.pluginRef: no plugin named {ref!r} in plugins")
            if (role := _role(plugins, ref)) is not None:
                raise ConfigError(f"{rpath}.pluginRef: {ref!r} is a {role} plugin, not a scheduling one")
            w = rd.get("weight")
            bad = isinstance(w, bool) or not isinstance(w, int | float)
            fw = None if bad else as_finite(w)  # (None too for a 400-digit integer: qa36a F1)
            if w is not None and (fw is None or fw < 0):
                big = isinstance(w, int) and fw is None
                shown = f"an integer of {w.bit_length()} bits" if big else repr(w)
                raise ConfigError(f"{rpath}.weight: must be a finite number >= 0, got {shown}")
            refs.append(ProfileRef(ref, fw, rpath))
        profiles.append(ProfileSpec(_str(pd.get("name"), f"{path}.name"), refs, path))
    if len({p.name for p in profiles}) != len(profiles):
        raise ConfigError("schedulingProfiles: duplicate profile names")
    if d.get("data") is not None and d.get("dataLayer") is not None:
        raise ConfigError("dataLayer: the data layer is given twice (data and dataLayer); keep one")
    data_key = "dataLayer" if d.get("dataLayer") is not None else "data"
    data_layer = _data_layer(d.get(data_key), data_key, plugins, warnings)
    parser = _parser(d.get("parser"), plugins)
    request_handler = _request_handler(d.get("requestHandler"), plugins)
    parsers = _parser_chain(parser, request_handler, plugins, warnings)
    gates = _list(d.get("featureGates"), "featureGates")
    enabled: dict[str, bool] = {}
    for i, g in enumerate(gates):
        gate, on = _feature_gate(_str(g, f"featureGates[{i}]"), f"featureGates[{i}]")
        enabled[gate] = on  # (the last entry for a gate wins, as the reference's)
    if not profiles:
        # Reference behaviour: one "default" profile referencing every plugin (weight 1).
        profiles = [
            ProfileSpec(
                "default", [ProfileRef(p.name, None, p.path) for p in plugins if not _is_special(p)], ""
            )
        ]
    cfg = EndpointPickerConfig(
        plugins=plugins,
        profiles=profiles,
        feature_gates=[gate for gate, on in enabled.items() if on],
        saturation_detector=_detector(d.get("saturationDetector"), plugins, warnings),
        data_layer=data_layer,
        flow_control=_mapping(d.get("flowControl"), "flowControl"),
        parser=parser,
        request_handler=request_handler,
        parsers=parsers,
        warnings=warnings,
        name=name,
    )
    validate(cfg, announce=announce)
    return cfg


_AFFINITY_FILTER = "prefix-cache-affinity-filter"


def _llmd_affinity_defaults(plugins: list[PluginSpec]) -> None:
    """Under llm-d's apiVersion a ``prefix-cache-affinity-filter`` that sets neither rule's keys (``- type:
    prefix-cache-affinity-filter`` alone, as llm-d's guide values write it) is llm-d-router's filter at its
    defaults: the reference's rule (threshold 0.80, the 18000 ms TTFT gate at 15928 tokens/s), as there.
    Under GIE's apiVersion (and kvgate's policies, which write none) no keys stay kvgate's own rule."""
    for spec in plugins:
        if spec.type != _AFFINITY_FILTER:
            continue
        if not any(k in spec.parameters for k in (*REFERENCE_KEYS, *KVGATE_KEYS)):
            spec.parameters = {**spec.parameters, "affinityThreshold": DEFAULT_THRESHOLD}


_APPROX_PRODUCER = "approx-prefix-cache-producer"
_PRODUCER_KEY = "prefixMatchInfoProducerName"
_PRECISE_SCORER = "precise-prefix-cache-scorer"


def _precise_producers(plugins: list[PluginSpec]) -> list[str]:
    """llm-d-router's split precise layout: a ``precise-prefix-cache-producer`` holds the KV-event index's
    parameters (llm-d's nested keys) and a ``prefix-cache-scorer`` names it (``prefixMatchInfoProducerName``),
    fed tokens by a ``token-producer``. kvgate's ``precise-prefix-cache-scorer`` holds the index and
    tokenizes itself, so such a scorer becomes one, with its producer's parameters, declared where they
    are (errors and warnings name the producer's keys); with no tokenizer among them, the token-producer's
    ``modelName``'s local one (else ``auto``: each request's model name looked up locally). Returns one
    WARNING line per producer no scorer reads (it holds no index here)."""
    by_name = {p.name: p for p in plugins}
    model = next((p.parameters.get("modelName") for p in plugins if p.type == TOKEN_PRODUCER), None)
    taken: dict[str, str] = {}
    for spec in plugins:
        ref = spec.parameters.get(_PRODUCER_KEY) if spec.type == "prefix-cache-scorer" else None
        producer = by_name.get(ref) if isinstance(ref, str) else None
        if producer is None or producer.type != PRECISE_PRODUCER or not isinstance(ref, str):
            continue
        _take_producer(spec, ref, taken)
        params = copy.deepcopy(producer.parameters)
        pool = (params.get("indexerConfig") or {}).get("tokenizersPoolConfig") or {}
        if "tokenizer" not in params and not pool.get("modelName"):
            params["tokenizer"] = local_tokenizer(model)[0] if isinstance(model, str) and model else AUTO
        spec.type, spec.parameters, spec.path = _PRECISE_SCORER, params, producer.path
    return [
        f"{p.path}: no prefix-cache-scorer names this {PRECISE_PRODUCER} ({_PRODUCER_KEY}): it holds no "
        "index here, nothing reads its matches"
        for p in plugins
        if p.type == PRECISE_PRODUCER and p.name not in taken
    ]


def _take_producer(spec: PluginSpec, ref: str, taken: dict[str, str]) -> None:
    """``spec``, a ``prefix-cache-scorer`` naming its producer ``ref``, becomes that producer's reader
    (``taken``): it sets no other parameter (they are the producer's), and no other scorer reads ``ref``
    (the reference's two consumers would share one index; kvgate's scorer holds it). Errors name the key."""
    where = f"{spec.path}.parameters"
    if others := sorted(k for k in spec.parameters if k != _PRODUCER_KEY):
        raise ConfigError(
            f"{where}.{others[0]}: a prefix-cache-scorer that names its {_PRODUCER_KEY} takes no other "
            f"parameter: set it on {ref!r}"
        )
    if ref in taken:
        raise ConfigError(
            f"{where}.{_PRODUCER_KEY}: {ref!r} is read by {taken[ref]} already: kvgate's scorer holds "
            "its producer's index, so one prefix-cache-scorer per producer"
        )
    taken[ref] = spec.path


def _prefix_producers(plugins: list[PluginSpec]) -> None:
    """llm-d-router's newest layout: an ``approx-prefix-cache-producer`` holds the approximate index's
    parameters and a ``prefix-cache-scorer`` names it (``prefixMatchInfoProducerName``). kvgate's scorer
    holds its index itself, so such a scorer takes its producer's parameters (as the scorer's keys). Naming
    the reference's default producer without declaring it is the defaults (the reference creates it)."""
    by_name = {p.name: p for p in plugins}
    translate = getattr(registry.get(_APPROX_PRODUCER), "scorer_parameters", None)
    taken: dict[str, str] = {}
    reader: dict[str, str] = {}  # producer name -> the scorer holding its index
    for spec in plugins:
        if spec.type != "prefix-cache-scorer" or _PRODUCER_KEY not in spec.parameters:
            continue
        where = f"{spec.path}.parameters"
        ref = _str(spec.parameters[_PRODUCER_KEY], f"{where}.{_PRODUCER_KEY}")
        _take_producer(spec, ref, taken)
        producer = _named_producer(by_name, ref, where)
        reader[ref] = spec.name
        spec.parameters = (
            {}
            if producer is None or translate is None
            else translate(Params(producer.parameters, f"{producer.path}.parameters"))
        )
    _producer_consumers(plugins, by_name, reader)


def _named_producer(
    by_name: Mapping[str, PluginSpec],
    ref: str,
    where: str,
    kind: str = _APPROX_PRODUCER,
    key: str = _PRODUCER_KEY,
) -> PluginSpec | None:
    """The declared producer of type ``kind`` a consumer names in ``key`` (None: the reference's default
    one, undeclared, named as its type), or the error naming the consumer's key."""
    producer = by_name.get(ref)
    if producer is None and ref != kind:
        raise ConfigError(f"{where}.{key}: no plugin named {ref!r} in plugins")
    if producer is not None and producer.type != kind:
        exact = " (kvgate's exact index is the precise-prefix-cache-scorer)"
        note = exact if kind == _APPROX_PRODUCER else ""
        raise ConfigError(f"{where}.{key}: {ref!r} is a {producer.type!r}, not an {kind!r}{note}")
    return producer


def _producer_consumers(
    plugins: list[PluginSpec], by_name: Mapping[str, PluginSpec], reader: Mapping[str, str]
) -> None:
    """A prefix consumer other than the scorer (``prefix-cache-affinity-filter``) naming its producer the
    reference's way (``prefixMatchInfoProducerName``) reads what kvgate's ``prefixPluginRef`` names: the
    scorer that holds that producer's index, else the declared producer (its own index, built with its
    parameters), else the defaults (the reference's default producer, undeclared). A ``prefixPluginRef``
    naming such a producer reads that scorer too: one index per producer (review s28-rev-fixes28a F6)."""
    for spec in plugins:
        if spec.type == "prefix-cache-scorer":
            continue
        own = spec.parameters.get("prefixPluginRef")
        if _PRODUCER_KEY not in spec.parameters:
            if isinstance(own, str) and own in reader:
                spec.parameters = {**spec.parameters, "prefixPluginRef": reader[own]}
            continue
        cls = registry.get(spec.type)
        if cls is None or not issubclass(cls, UsesPrefixPlugin):
            continue  # (the plugin's own check names the key as unknown)
        where = f"{spec.path}.parameters"
        ref = _str(spec.parameters[_PRODUCER_KEY], f"{where}.{_PRODUCER_KEY}")
        if "prefixPluginRef" in spec.parameters:
            raise ConfigError(f"{where}.{_PRODUCER_KEY}: give it or prefixPluginRef, not both")
        producer = _named_producer(by_name, ref, where)
        params = {k: v for k, v in spec.parameters.items() if k != _PRODUCER_KEY}
        if ref in reader or producer is not None:
            params["prefixPluginRef"] = reader.get(ref, ref)
        spec.parameters = params


_LOAD_PRODUCER = "inflight-load-producer"
_LOAD_PRODUCER_KEY = "inFlightLoadProducerName"


def _load_producer_refs(plugins: list[PluginSpec]) -> None:
    """llm-d-router's in-flight load consumers (the affinity filter, ``active-request-scorer``) name their
    ``inflight-load-producer`` (``inFlightLoadProducerName``), and that producer its prefix producer
    (``prefixMatchInfoProducerName``). kvgate keeps the load itself (``Endpoint.inflight``), so the names
    are only checked, as the prefix consumers' are: a declared plugin of that type, or the reference's
    default producer's name (a typo is an error naming the key, not silently taken)."""
    by_name = {p.name: p for p in plugins}
    for spec in plugins:
        where = f"{spec.path}.parameters"
        if spec.type == _LOAD_PRODUCER and _PRODUCER_KEY in spec.parameters:
            _named_producer(by_name, _str(spec.parameters[_PRODUCER_KEY], f"{where}.{_PRODUCER_KEY}"), where)
        if spec.parameters.get(_LOAD_PRODUCER_KEY, "") == "":  # (unset or empty: the default producer)
            continue
        ref = _str(spec.parameters[_LOAD_PRODUCER_KEY], f"{where}.{_LOAD_PRODUCER_KEY}")
        _named_producer(by_name, ref, where, _LOAD_PRODUCER, _LOAD_PRODUCER_KEY)


def _is_special(p: PluginSpec) -> bool:
    """Plugins that never sit in a profile's filter/scorer/picker chain."""
    cls = registry.get(p.type)
    return cls is not None and issubclass(cls, ProfileHandler | SaturationDetector | Wiring)


def _role(plugins: list[PluginSpec], name: str) -> str | None:
    """The data-layer or parser role of the plugin named ``name`` (None: not such a plugin)."""
    spec = next((p for p in plugins if p.name == name), None)
    cls = registry.get(spec.type) if spec is not None else None
    return cls.role if cls is not None and issubclass(cls, Wiring) else None


def _ref(raw: Any, path: str, plugins: list[PluginSpec], role: str) -> str:
    """A ``{pluginRef}`` naming a declared plugin of ``role``."""
    d = _mapping(raw, path)
    _check_keys(d, ("pluginRef",), path)
    ref = _str(d.get("pluginRef"), f"{path}.pluginRef")
    if not any(p.name == ref for p in plugins):
        raise ConfigError(f"{path}.pluginRef: no plugin named {ref!r} in plugins")
    if _role(plugins, ref) != role:
        raise ConfigError(f"{path}.pluginRef: {ref!r} is not a {role} plugin")
    return ref


# llm-d-router's DataLayerConfig keys beyond ``sources``: how it finds endpoints and shares state between
# its replicas. kvgate discovers endpoints itself and keeps no cross-replica state: one WARNING line.
_DATA_LAYER_NOT_APPLIED = (
    "discovery",
    "peerDiscovery",
    "crossReplicaSyncerPluginRef",
    "crossReplicaSyncInterval",
    "crossReplicaPublishTimeout",
    "crossReplica",  # (llm-d.ai/v1's spelling of the three above: qa36a F8)
)


def _data_layer(raw: Any, key: str, plugins: list[PluginSpec], warnings: list[str]) -> dict[str, Any]:
    """The reference's ``data`` (or llm-d-router's ``dataLayer``): ``sources[{pluginRef,
    extractors[{pluginRef}]}]``, checked; kvgate's own scraper does that work (``scheduling.plugins.wiring``).
    ``injectDefaults`` (llm-d-router: false = no default metrics source) is taken silently: kvgate's scraper
    is not a source to inject or leave out."""
    d = _mapping(raw, key)
    _check_keys(d, ("sources", "injectDefaults", *_DATA_LAYER_NOT_APPLIED), key)
    if "injectDefaults" in d and not isinstance(d["injectDefaults"], bool):
        raise ConfigError(f"{key}.injectDefaults: must be true or false, got {d['injectDefaults']!r}")
    for i, src in enumerate(_list(d.get("sources"), f"{key}.sources")):
        path = f"{key}.sources[{i}]"
        sd = _mapping(src, path)
        _check_keys(sd, ("pluginRef", "extractors"), path)
        _ref({"pluginRef": sd.get("pluginRef")}, path, plugins, "data source")
        for j, ext in enumerate(_list(sd.get("extractors"), f"{path}.extractors")):
            _ref(ext, f"{path}.extractors[{j}]", plugins, "extractor")
    if off := [k for k in _DATA_LAYER_NOT_APPLIED if d.get(k) not in (None, "", {})]:
        warnings.append(
            f"{key}: {', '.join(off)} not applied: kvgate finds endpoints itself (--endpoints, pools, "
            "Kubernetes) and shares no state between replicas"
        )
    return d


def _parser(raw: Any, plugins: list[PluginSpec]) -> dict[str, Any]:
    """The reference's ``parser: {pluginRef}``: kvgate parses the OpenAI API, its ``openai-parser``."""
    if raw is None or raw == {}:  # (nothing asked: the default, openai-parser)
        return {}
    _ref(raw, "parser", plugins, "parser")
    return dict(raw)


def _request_handler(raw: Any, plugins: list[PluginSpec]) -> dict[str, Any]:
    """llm-d-router's ``requestHandler: {parsers: [{pluginRef}]}`` (its replacement for ``parser``): each a
    declared parser plugin, as ``parser``'s."""
    d = _mapping(raw, "requestHandler")
    _check_keys(d, ("parsers",), "requestHandler")
    for i, ref in enumerate(_list(d.get("parsers"), "requestHandler.parsers")):
        _ref(ref, f"requestHandler.parsers[{i}]", plugins, "parser")
    return d


# A parser claiming no path (llm-d-router's ``Claims().Paths`` empty): it takes every path the parsers before
# it do not claim, and the ones after it are never reached (its ParserRegistry: "skipped").
FALLBACK_PARSERS = frozenset({"passthrough-parser"})


def _parser_chain(
    parser: dict[str, Any], handler: dict[str, Any], plugins: list[PluginSpec], warnings: list[str]
) -> list[str]:
    """The parser plugins' types in match order: ``requestHandler.parsers`` (llm-d-router's replacement
    of ``parser``, so it wins when both are given: one WARNING line), else ``parser``'s one. Those after
    a fallback parser are one WARNING line each, as llm-d-router logs them, and left out."""
    types = {p.name: p.type for p in plugins}
    refs = [r["pluginRef"] for r in handler.get("parsers") or []]
    if refs and parser:
        warnings.append("parser: not applied: requestHandler.parsers replaces it")
    elif parser:
        refs = [parser["pluginRef"]]
    chain: list[str] = []
    for i, ref in enumerate(refs):
        if chain and chain[-1] in FALLBACK_PARSERS:
            warnings.append(
                f"requestHandler.parsers[{i}]: {ref!r} is skipped: it comes after the fallback parser "
                f"{chain[-1]!r}, which takes every path"
            )
            continue
        chain.append(types[ref])
    return chain


def validate(cfg: EndpointPickerConfig, *, announce: bool = True) -> None:
    """Build every plugin once (checks parameters) and check profile composition; with ``announce``, log
    what the config warns of, one WARNING line each (the builds after it say nothing again)."""
    parse_flow_control(cfg.flow_control, plugins=cfg.plugin_types())  # checked with the gate off too
    for line in cfg.warnings if announce else ():
        log.warning("%s", line)
    handle = PluginHandle()
    # Built to be checked, never run: it holds no named index after, nor clashes with a running picker's
    # (the build that runs does: review s29-qa29 Q5).
    claims = precise_prefix.IndexClaims(leaving=None)
    try:
        with precise_prefix.claiming(claims):
            for spec in cfg.plugins:
                instantiate(spec, handle, announce=announce)
            if cfg.saturation_detector is not None and cfg.saturation_detector not in cfg.plugins:
                instantiate(cfg.saturation_detector, handle, announce=announce)
    finally:
        claims.release()
    if announce and cfg.saturation_detector is not None:
        _check_interval(handle.plugins.values(), handle.plugins[cfg.saturation_detector.name])
    handlers = [p for p in cfg.plugins if isinstance(handle.plugins[p.name], ProfileHandler)]
    if len(handlers) > 1:
        raise ConfigError(f"{handlers[1].path}: only one profile handler may be configured")
    if (not handlers or handlers[0].type == "single-profile-handler") and len(cfg.profiles) > 1:
        raise ConfigError("schedulingProfiles: single-profile-handler needs exactly one profile")
    for prof in cfg.profiles:
        pickers = [r for r in prof.plugins if isinstance(handle.plugins[r.plugin_ref], Picker)]
        if len(pickers) > 1:
            raise ConfigError(f"{pickers[1].path}.pluginRef: profile {prof.name!r} already has a picker")


def _check_interval(plugins: Iterable[Any], detector: Any) -> None:
    """One WARNING naming the key where the data source's ``interval`` leaves a detector that reads the
    scraped metrics stale between scrapes (review s28-rev-cfg28 F9): past its ``scrape_bound`` it counts
    an endpoint saturated, so sheddable requests are refused and flow control holds. kvgate's own cadence
    keeps under half the bound (``datalayer.scraper.quiet_interval_for``); the reference accepts any
    interval, so this warns. A detector that reads no scraped metrics (concurrency-detector) is not
    harmed: nothing said (review s28-rev-fixes28a F7). Said by ``validate``, so once per load (F4)."""
    src = next(
        (s for s in (getattr(p, "source", None) for p in plugins) if isinstance(s, ScrapeSource)), None
    )
    if src is None or src.interval is None or not isinstance(detector, SaturationDetector):
        return
    bound = detector.scrape_bound()
    if detector.reads_scraped_metrics and src.interval > bound / 2:
        log.warning(
            "%s.interval: %g s is more than half of what the pool's saturation detector (%s) bridges "
            "(%g s): its metrics go stale between scrapes and it counts the endpoints saturated (sheddable "
            "requests refused, flow control holding); the reference's interval is 50ms",
            src.origin or "metrics-data-source.parameters",
            src.interval,
            detector.type_name,
            bound,
        )


def instantiate(spec: PluginSpec, handle: PluginHandle, *, announce: bool = False) -> Any:
    """Build one plugin; with ``announce`` (the load's check, ``validate``), log what its parameters warned
    of, one WARNING line each."""
    cls = registry.get(spec.type)
    if cls is None:
        raise ConfigError(f"{spec.path}.type: unknown plugin type {spec.type!r}")
    params = spec.params()
    try:
        plugin = cls.create(spec.name, params, handle)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # (OverflowError: a huge integer's float; qa36a F1)
        raise ConfigError(f"{spec.path}.parameters: {e}") from e
    if announce:
        for line in params.warnings:
            log.warning("%s", line)
    handle.plugins[spec.name] = plugin
    return plugin


def load_config(source: str | Path, *, neither: str = "") -> EndpointPickerConfig:
    """Load from a YAML file path, or YAML text when ``source`` is a string holding a document. A file
    over ``yamlload.max_config_bytes()``, one holding no document (empty, comments only) and a one-line
    string that is neither a file nor a document (a path or policy name mistyped) are ``ConfigError``s
    saying so (review qa36a F5, F9); ``neither``: what else such a string could have named (``a policy
    (...)``). An integer of more digits than Python reads is one naming its key (review rev-d36 F3)."""
    if isinstance(source, str) and not source.strip():
        raise ConfigError("config: empty: give an EndpointPickerConfig file path or its YAML text")
    text: Any
    if isinstance(source, Path) or ("\n" not in source and Path(source).is_file()):
        name = str(source)
        try:
            text = yamlload.read_config(source)
        except OSError as e:
            raise ConfigError(f"config: cannot read {name}: {e.strerror}") from e
        except ValueError as e:  # (too large, not UTF-8)
            raise ConfigError(f"config: {e}") from e
    else:
        text, name = str(source), "custom"
    try:
        doc = yamlload.safe_load(text)
    except yamlload.KeyedError as e:
        raise ConfigError(e.key, e.detail) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config: invalid YAML: {e}") from e
    if doc is None:
        raise ConfigError(f"config: {name} holds no EndpointPickerConfig (empty, or only comments)")
    if isinstance(doc, str) and name == "custom" and "\n" not in str(source):
        what = f"neither {neither} nor a file" if neither else "no file (and no EndpointPickerConfig YAML)"
        raise ConfigError(f"config: {source!r} is {what}")
    return parse_config(doc, name=name)
