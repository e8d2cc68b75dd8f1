"""The reference's data-layer and request-parser plugins, taken as configuration (qa27 Q4).

The reference EPP scrapes with a ``metrics-data-source`` and reads the page with a
``core-metrics-extractor`` (older: ``model-server-protocol-metrics``), wired in the config's ``data`` (or
``dataLayer``) section, and parses bodies with the ``parser`` section's plugin (``openai-parser``;
llm-d-router: ``requestHandler.parsers``, which a ``passthrough-parser`` may end: ``kvgate epp`` honours
that one, ``extproc.parsers``). kvgate
does the same work itself: its scraper reads each endpoint's ``/metrics`` with its engine's mapping
(``--engine`` / ``pools[].engine``, or the pod's engine-type label) and parses the OpenAI API. So these
plugins are accepted with their parameters checked; a setting that means what kvgate does anyway is
silent, one kvgate cannot honour is one WARNING line naming the keys (``config.picker.validate`` logs it).
They take no part in scheduling.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from kvgate.datalayer.mappings import MAPPINGS, EngineMapping, Signal
from kvgate.datalayer.scrape_source import ScrapeSource, source_tls
from kvgate.datalayer.store import LLMD_ENGINE_LABEL
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
    "(--engine / pools[].engine, else the pod's llm-d.ai/engine-type or "
    "inference.networking.k8s.io/engine-type label; in kvgate epp engineLabelKey or --engine-label-key "
    "names another)"
)


class Wiring(Plugin):
    """A reference plugin whose work kvgate does itself; ``role`` says which config section may name it."""

    role: ClassVar[str] = ""


def _warn_unhonoured(params: Params, keys: list[str], why: str) -> None:
    if keys:
        params.warnings.append(f"{params.path}: {', '.join(keys)} {why}")


@register("metrics-data-source")
class MetricsDataSource(Wiring):
    """The reference's scrape settings, honoured by kvgate's scraper (``datalayer.scrape_source``):
    ``scheme``, ``path``, ``port`` (every endpoint scraped on it), ``interval``, and for https
    ``insecureSkipVerify`` (the reference's default: true), ``caCertPath``, ``clientCertPath`` /
    ``clientKeyPath``. A key left out is the scraper's own setting (https for a pool's
    ``https://`` endpoints, verified against its ``caFile``); ``scheme: http`` does not undo an https
    pool's scrape, nor ``scheme: https`` without a TLS key its verification (``scrape_source.resolve``).
    ``families`` is checked, not applied: kvgate asks each server for the series its engine's mapping
    reads, and parses only those."""

    role = "data source"

    def __init__(self, name: str, handle: PluginHandle, source: ScrapeSource | None = None) -> None:
        super().__init__(name, handle)
        self.source = source or ScrapeSource()

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> MetricsDataSource:
        scheme = params.get_str("scheme", "", choices=("http", "https")) or None
        path = params.get_str("path", "") or None
        if path is not None and not path.startswith("/"):
            raise ConfigError(f"{params.path}.path: must start with '/', got {path!r}")
        # (present: 1-65535, as llm-d-router's factory: "invalid port 0", null included, which it reads
        # as 0; left out: the endpoint's own)
        port = params.get_int("port", 0, min=1, max=65535) if "port" in params.raw else None
        if port == 0:
            raise ConfigError(f"{params.path}.port: must be in [1, 65535] (or left out), got null")
        interval = params.get_duration("interval", 0.0) or None
        tls_keys = ("insecureSkipVerify", "caCertPath", "clientCertPath", "clientKeyPath")
        explicit_tls = any(params.has(k) for k in tls_keys)
        skip = params.get_bool("insecureSkipVerify", True)  # (the reference's default)
        ca, cert, key = (params.get_str(k, "") for k in tls_keys[1:])
        families = params.get_list("families")
        params.finish()
        if any(not isinstance(f, str) or not f for f in families):
            raise ConfigError(f"{params.path}.families: must be a list of metric family names")
        if bool(cert) != bool(key):
            missing = "clientKeyPath" if cert else "clientCertPath"
            raise ConfigError(
                f"{params.path}.{missing}: required with {'clientCertPath' if cert else 'clientKeyPath'}"
            )
        # Only TLS keys build the source's own context: ``scheme: https`` alone leaves the verification to
        # the scraper (a pool's caFile kept; the reference's default only where it scrapes http itself:
        # ``scrape_source.resolve``).
        tls = None
        if explicit_tls:
            try:
                tls = source_tls(skip, ca)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"{params.path}.caCertPath: {e}") from e
            if cert:
                _load_client_cert(tls, cert, key, params.path)
            if ca and skip:
                params.warn(
                    "caCertPath",
                    "not used: insecureSkipVerify is true (the reference's default); set "
                    "insecureSkipVerify: false to verify against it",
                )
        if families:
            params.warn(
                "families",
                "not applied: kvgate asks each server for, and parses, only the series its engine's "
                "mapping reads",
            )
        return cls(name, handle, ScrapeSource(scheme, path, port, tls, interval, origin=params.path))


def _load_client_cert(tls: ssl.SSLContext, cert: str, key: str, path: str) -> None:
    """mTLS's certificate and key into ``tls``; a ConfigError naming the key whose file failed."""
    texts = {}
    for name, file in (("clientCertPath", cert), ("clientKeyPath", key)):
        try:
            with open(file, "rb") as f:
                texts[name] = f.read()
        except OSError as e:
            raise ConfigError(f"{path}.{name}: {e}") from e
    try:
        tls.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        # Both readable: the one that is no PEM certificate (or, it being one, the key) is at fault.
        is_cert = b"-----BEGIN CERTIFICATE-----" in texts["clientCertPath"]
        bad = "clientKeyPath" if is_cert else "clientCertPath"
        raise ConfigError(f"{path}.{bad}: {e}") from e


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
    params.get_str("engineLabelKey", LLMD_ENGINE_LABEL)  # (checked: a string)
    default = params.get_str("defaultEngine", "vllm")
    off = [f"engineConfigs {engine!r}" for engine in _engine_configs(params)]
    if flat:  # (the older plugin's one engine, its specs as parameters)
        specs = {k: params.get_str(k, "") for k in _FLAT_KEYS}
        off += [f"{k} {v!r}" for k, v in specs.items() if v and v not in _reads(MAPPINGS["vllm"], k)]
    params.finish()
    # ``engineLabelKey`` is the door's to apply (its store reads the label before any endpoint is built):
    # both doors apply it (``engine_label``: ``kvgate epp``, ``gateway.pools.make_store``).
    if default != "vllm":
        off.insert(0, f"defaultEngine {default!r}")
    _warn_unhonoured(params, off, _NOT_SCRAPED)
    return cls(name, handle)


# The metrics extractors whose parameters may name ``engineLabelKey`` (``_extractor``).
EXTRACTOR_TYPES = ("core-metrics-extractor", "model-server-protocol-metrics")


def engine_label_keys(picker: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The EndpointPickerConfig's ``engineLabelKey`` values, ``(key path, label)`` in plugin order: read
    from the decoded document, as a door needs it before the picker is built (its store names each
    endpoint's engine as the endpoint is added). An empty or absent one is the default (kvgate's labels);
    a value not a string is left to the build's own error."""
    plugins = (picker or {}).get("plugins")
    out = []
    for i, p in enumerate(plugins if isinstance(plugins, list) else ()):
        if not isinstance(p, Mapping) or p.get("type") not in EXTRACTOR_TYPES:
            continue
        params = p.get("parameters")
        label = params.get("engineLabelKey") if isinstance(params, Mapping) else None
        if isinstance(label, str) and label:
            out.append((f"plugins[{i}].parameters.engineLabelKey", label))
    return out


def engine_label(picker: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The one ``(key path, label)`` the EndpointPickerConfig names for a pod's engine (None: kvgate's
    default labels); ValueError naming both keys when two extractors name different labels (one store,
    one label: both doors refuse it)."""
    given = engine_label_keys(picker)
    if other := next(((path, label) for path, label in given if label != given[0][1]), None):
        raise ValueError(f"{other[0]}: {other[1]!r}, but {given[0][0]} names {given[0][1]!r}: one label "
                         "names every pod's engine")  # fmt: skip
    return given[0] if given else None


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


@register("passthrough-parser")
class PassthroughParser(Wiring):
    """llm-d-router's parser that reads nothing: the body goes on as sent, picked without a prompt or a
    model (``kvgate epp``: ``extproc.parsers``; qa34a F3). It claims no path, so it takes every path no
    parser before it claims."""

    role = "parser"


@register("inflight-load-producer")
class InFlightLoadProducer(Wiring):
    """llm-d-router's producer of each endpoint's in-flight requests and uncached prompt tokens (read by
    its ``token-load-scorer`` and the affinity filter's load gate): kvgate's Director keeps both itself
    (``Endpoint.inflight``), so the plugin is configuration only. ``addEstimatedOutputTokens: true`` (the
    token count holding an output estimate until the end) is one WARNING line: kvgate's gate counts prompt
    tokens until the first token, and its ``token-load-scorer`` weighs decode with ``decodeWeight``."""

    role = "load producer"

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> InFlightLoadProducer:
        if params.get_bool("addEstimatedOutputTokens", False):
            params.warn(
                "addEstimatedOutputTokens",
                "true not applied: kvgate counts prompt tokens until the first token",
            )
        # (the prefix producer whose match discounts the cached prompt: kvgate's counts use its own prefix
        # plugin; the name is checked to name one, config.picker._load_producer_refs)
        params.get_str("prefixMatchInfoProducerName", "")
        params.finish()
        return cls(name, handle)
