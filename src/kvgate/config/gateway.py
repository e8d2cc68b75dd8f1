"""Gateway configuration for ``kvgate serve``: pools, models, objectives, rewrites, limits.

Loaded from YAML (``kvgate serve --config gw.yaml``) or built from CLI flags for a config-free start.
Every validation error names the offending key path (``pools[1].endpoints[0]``) so a user can fix
the file without reading code. The picker's own ``EndpointPickerConfig`` is kept as a raw mapping
here (inline or loaded from ``endpointPickerConfigFile``) and handed to the scheduling package, which
owns its schema; a pool with neither gets the named ``policy`` (kvgate by default).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvgate import yamlload
from kvgate.config.policies import POLICIES as NAMED_POLICIES
from kvgate.datalayer.store import ENGINES
from kvgate.openai.protocol import DEFAULT_SESSION_HEADER
from kvgate.scheduling.framework import ConfigError

# One list each: the named policies (kvgate.config.policies) and the engines with a metric mapping.
POLICIES = tuple(NAMED_POLICIES)
# InferenceModelRewrite bounds target weights to 1..1,000,000.
MAX_REWRITE_WEIGHT = 1_000_000
# ``listen.workerTimeoutSeconds`` (``--worker-timeout``): its default and its range (0: never). A worker
# beats every ``gateway.workers.HEARTBEAT_S`` (0.5 s), so the least bound is a few missed beats.
WORKER_TIMEOUT_S = 10.0
MIN_WORKER_TIMEOUT_S = 2.0
MAX_WORKER_TIMEOUT_S = 3600.0


class GatewayConfigError(ConfigError):
    """A gateway config problem; ``.key`` is the key path it concerns (the message starts with it)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)


# The InferencePool API groups (``k8s.resources.POOL_GROUPS``' keys; k8s sits above config): v1 (GA), and
# the older v1alpha2 pool (GIE v0.x, llm-d v0.3's charts), as the reference EPP's ``--pool-group``.
POOL_GROUPS = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")


@dataclass(frozen=True, slots=True)
class InferencePoolRef:
    """``pools[].inferencePool``: discover the pool's endpoints from this Kubernetes InferencePool."""

    name: str
    namespace: str = "default"
    # ``group``: the pool's API group (a ``POOL_GROUPS`` entry, as an HTTPRoute's backendRef and an
    # InferenceObjective's ``poolRef`` name it); None: ``--pool-group``'s, else v1's.
    group: str | None = None


def group_not_the_files(flag: str | None, pool: str, ref: InferencePoolRef) -> str | None:
    """Why ``--pool-group`` (given) cannot apply to pool ``pool`` whose ``inferencePool`` names another
    ``group``, or None. Refused, not honoured, as ``--pool-namespace`` beside a file naming the namespace:
    the file names the InferencePool for both doors."""
    if not flag or ref.group is None or flag == ref.group:
        return None
    return (
        f"{flag!r} is not pool {pool!r}'s InferencePool group in the config ({ref.group!r}: its "
        "inferencePool.group); drop the flag, or the pool's inferencePool.group"
    )


@dataclass(slots=True)
class PoolConfig:
    name: str
    endpoints: list[str]  # normalised "host:port"
    models: list[str]
    adapters: list[str] = field(default_factory=list)
    engine: str = "vllm"
    policy: str = "kvgate"
    # Raw EndpointPickerConfig mapping (inline or from file); None = use ``policy``.
    picker_config: dict[str, Any] | None = None
    # Endpoints come from Kubernetes (an InferencePool) instead of ``endpoints``.
    inference_pool: InferencePoolRef | None = None
    # "https" when the endpoints were given as https://host:port (verified against ``ca_file``, or the
    # system's CAs without one).
    scheme: str = "http"
    ca_file: str | None = None
    # Labels per endpoint address (e.g. ``kvgate.io/kv-events`` from KV-events detection at start-up).
    endpoint_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    # ``passPriority``: the request's InferenceObjective priority goes to the server as vLLM's ``priority``
    # body field (negated: vLLM runs lower first). Off by default: vLLM refuses a nonzero ``priority``
    # unless it runs ``--scheduling-policy priority``.
    pass_priority: bool = False
    # The picker key (``endpointPickerConfig`` / ``...File``) a ``policy`` given beside it yields to
    # (``ignored_policy``: one WARNING at load, qa36a F12); not compared: the picker is the same.
    policy_beside: str | None = field(default=None, compare=False)


def ignored_policy(cfg: PoolConfig) -> str | None:
    """The WARNING line for a pool's ``policy`` given beside its picker config (None: not so)."""
    if cfg.policy_beside is None:
        return None
    return (
        f"pool {cfg.name}: policy {cfg.policy!r} not applied: its {cfg.policy_beside} is the picker "
        "(give one of the two)"
    )


@dataclass(slots=True)
class RewriteTarget:
    model: str
    weight: int


@dataclass(slots=True)
class RewriteRule:
    # Exact model names that trigger the rule; empty = every model (as in InferenceModelRewrite).
    matches: list[str]
    targets: list[RewriteTarget]


@dataclass(slots=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_concurrent_requests: int = 10_000
    # Whole request, from arrival to the last byte sent; 0 disables it (long generations).
    request_timeout_s: float = 600.0
    # Longest gap between two upstream reads (time to headers, then between chunks).
    idle_timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    # Tries per request across different endpoints; only before any byte reached the client.
    max_attempts: int = 3
    drain_timeout_s: float = 30.0
    # Idle client connections (kept alive, nothing received) close after this.
    keepalive_s: float = 75.0
    # Client-side deadlines (kvgate.httpfront.server): whole request head, whole body (408 then close),
    # and a write the client does not take (nginx send_timeout; aborts, releasing slot and upstream).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 30.0
    # Output buffered per client connection before writers wait on it.
    write_buffer_bytes: int = 256 * 1024
    # Open client connections per process (clamped to the fd limit); more get 503 too_many_connections.
    max_connections: int = 10_000
    # Request bodies held per process (arriving, queued, being answered), all connections together; a
    # body taking it past it gets 503 with Retry-After (``kvgate epp --max-buffered-bytes``); bytes are
    # taken as they arrive, a head only checks that its Content-Length fits in what is free.
    max_buffered_bytes: int = 1 << 30
    # One client's (a peer host's) big bodies waiting for the parse thread or on it, at most (a body past
    # it gets 429 while another of that client's waits; ``httpfront.offload``); 0: a quarter of
    # ``max_buffered_bytes`` (``httpfront.offload.waiting_share``). ``--max-waiting-bytes-per-client``.
    max_waiting_bytes_per_client: int = 0
    # Finished Responses API turns kept for their follow-ups' estimates (``previous_response_id``: the
    # conversation's tokens and prefix blocks; ``openai.responses.ResponseTurns``, ~2.3 KB each at most;
    # 0: none, a follow-up is estimated as its new input alone). ``kvgate serve --response-turns``.
    response_turns: int = 10_000


@dataclass(slots=True)
class HealthConfig:
    # Consecutive failed attempts that eject an endpoint.
    eject_after_failures: int = 3
    eject_base_s: float = 5.0
    eject_max_s: float = 60.0
    # At most this share of a pool's endpoints ejected at once, and at least one (Envoy's outlier
    # detection ``max_ejection_percent``; its default, 10 %, means "one" on the 2-8 model servers of a
    # pool, so 50: a pool keeps at least half its servers whatever passive failures say).
    max_ejection_percent: float = 50.0
    probe_path: str = "/health"
    probe_timeout_s: float = 1.0
    # The data layer's verdict (kvgate.datalayer.health), shared with kvgate epp: this many failed
    # scrapes in a row, or metrics older than this, take an endpoint out of the candidates.
    scrape_failures: int = 3
    metrics_staleness_s: float = 5.0


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    """TLS for a listener (``kvgate serve --admin-tls``): PEM certificate and key, and the CA client
    certificates must be signed by (mutual TLS), None = no client certificate asked."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None


@dataclass(slots=True)
class GatewayConfig:
    pools: list[PoolConfig]
    objectives: dict[str, int] = field(default_factory=dict)
    rewrites: list[RewriteRule] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    health: HealthConfig = field(default_factory=HealthConfig)
    host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int | None = None
    # HTTPS (and mutual TLS) on the admin port; None = plaintext.
    admin_tls: ListenerTLS | None = None
    # Gateway processes sharing the data port (SO_REUSEPORT); picker state is per process.
    workers: int = 1
    # ``--workers``: the supervisor's /readyz is 200 while at least this many workers are ready.
    min_ready_workers: int = 1
    # ``--workers``: a worker whose event loop sent no heartbeat for this long is killed (SIGKILL) and
    # restarted by the supervisor (gunicorn's ``--timeout``); 0 = never.
    worker_timeout_s: float = WORKER_TIMEOUT_S
    scrape_interval_s: float = 0.05
    # Fixed seed for the weighted model rewrite (tests, reproducible canaries); None = random.
    rewrite_seed: int | None = None
    session_header: str = DEFAULT_SESSION_HEADER
    # Kubernetes API access for pools with ``inferencePool`` (flags; None = in-cluster or the kubeconfig).
    kube_server: str | None = None
    kubeconfig: str | None = None
    # ``--pool-group`` (flag only): the API group of every ``inferencePool`` watched; None = v1's.
    kube_pool_group: str | None = None
    # Staleness of the watched copy (kvgate.k8s.staleness; ``kubernetes.*`` in the file, the flags over
    # them): None = the default 120 s; 0 = stay ready.
    kube_stale_after_s: float | None = None
    kube_stale_not_ready_after_s: float = 0.0
    # ``--model-series-grace`` (flag only): how long a model name no label any more keeps its series
    # (``kvgate.openai.labels.ModelLabels.grace_s``); None: ``GRACE_S``.
    model_series_grace_s: float | None = None
    # Data-port access (kvgate.gateway.tenants): API keys from a file and/or an env var; None = open.
    api_keys_file: str | None = None
    api_keys_env: str | None = None
    # Per-tenant token buckets; 0 = no limit.
    rate_requests_per_minute: float = 0.0
    rate_tokens_per_minute: float = 0.0
    # Error bodies and the explain header never name endpoint addresses.
    hide_internal_addresses: bool = False
    # One line per finished request (``gateway.access``): off by default, it costs ~11 us of CPU per
    # request (review s24-rev-fixqa24 R4; docs/gateway.md "Access log").
    access_log: bool = False
    # ... written to this file (appended) instead of stderr (``--access-log-file``).
    access_log_file: str | None = None


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")
_PORT = re.compile(r"[0-9]+")


def endpoint_scheme(value: object) -> str:
    return "https" if isinstance(value, str) and value.strip().startswith("https://") else "http"


def normalise_endpoint(value: object, key: str) -> str:
    """``http://1.2.3.4:8000/``, ``https://vllm-0.vllm:8000`` or ``1.2.3.4:8000`` -> ``host:port`` (what the
    picker calls an address). DNS names are resolved on every new upstream connection (no caching here:
    the system resolver honours the record's TTL), so a re-pointed name is followed."""
    if not isinstance(value, str) or not value.strip():
        raise GatewayConfigError(key, "expected 'host:port' or 'http(s)://host:port'")
    text = value.strip()
    text = text.removeprefix("https://").removeprefix("http://").rstrip("/")
    if "/" in text:
        raise GatewayConfigError(key, f"{value!r} has a path; give only host:port")
    host, sep, port_s = text.rpartition(":")
    # ASCII digits only: isdigit() also takes superscript two (int() refuses it) and other scripts' digits.
    if not sep or not host or not _PORT.fullmatch(port_s) or not 0 < int(port_s) < 65536:
        raise GatewayConfigError(key, f"{value!r} is not host:port with a port in 1..65535")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise GatewayConfigError(key, f"{host!r} is neither an IP address nor a DNS name") from None
    return text


_FLOAT_MAX = sys.float_info.max


def _get(
    m: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = m.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
        raise GatewayConfigError(f"{path}{key}", f"expected {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise GatewayConfigError(f"{path}{key}", f"expected {_kind_name(kind)}, got {type(value).__name__}")
    # YAML's ``.nan`` / ``.inf`` are floats: NaN passes every ``<``/``==`` check and infinity is no bound
    # the event loop can arm (s19-qa M1). Every number of this file is finite; "no bound" is spelled 0
    # where the key allows it (``requestTimeoutSeconds``, ``rateLimits.*``, ``staleNotReadyAfterSeconds``).
    if isinstance(value, float) and not math.isfinite(value):
        raise GatewayConfigError(f"{path}{key}", f"must be a finite number, got {value}")
    # An integer too large for a float (YAML reads 400 digits as one; ``1e400`` is a string) is ``.inf``
    # spelled otherwise: every bound of this file is used as a float (``start + bound``).
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _FLOAT_MAX:
        too_large = (
            f"must be a finite number, got an integer too large for a float ({value.bit_length()} bits)"
        )
        raise GatewayConfigError(f"{path}{key}", too_large)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "list": "a list",
        "dict": "a mapping",
    }
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)


def _check_keys(m: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    for key in m:
        if key not in allowed:
            raise GatewayConfigError(f"{path}{key}", f"unknown key (allowed: {', '.join(allowed)})")


def _positive(value: float, key: str, *, allow_zero: bool = False) -> float:
    if value < 0 or (value == 0 and not allow_zero):
        raise GatewayConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def _string_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise GatewayConfigError(key, "expected a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise GatewayConfigError(f"{key}[{i}]", "expected a non-empty string")
    return list(value)


def _parse_pool(raw: Any, path: str, base_dir: str) -> PoolConfig:
    if not isinstance(raw, dict):
        raise GatewayConfigError(path, "expected a mapping")
    allowed = (
        "name",
        "engine",
        "endpoints",
        "models",
        "adapters",
        "policy",
        "endpointPickerConfig",
        "endpointPickerConfigFile",
        "caFile",
        "inferencePool",
        "passPriority",
    )
    _check_keys(raw, allowed, path + ".")
    name = _get(raw, "name", path + ".", str)
    if not name:
        raise GatewayConfigError(path + ".name", "required")
    engine = _get(raw, "engine", path + ".", str, "vllm")
    if engine not in ENGINES:
        raise GatewayConfigError(path + ".engine", f"{engine!r} is not one of {', '.join(ENGINES)}")
    ip_raw = raw.get("inferencePool")
    inference_pool: InferencePoolRef | None = None
    if ip_raw is not None:
        if not isinstance(ip_raw, dict):
            raise GatewayConfigError(path + ".inferencePool", "expected {name, namespace}")
        _check_keys(ip_raw, ("name", "namespace", "group"), path + ".inferencePool.")
        ip_name = _get(ip_raw, "name", path + ".inferencePool.", str)
        if not ip_name:
            raise GatewayConfigError(path + ".inferencePool.name", "required")
        group = _get(ip_raw, "group", path + ".inferencePool.", str, None)
        if group is not None and group not in POOL_GROUPS:
            raise GatewayConfigError(
                path + ".inferencePool.group",
                f"{group!r} is not one of {', '.join(POOL_GROUPS)} (v1; the older v1alpha2 InferencePool)",
            )
        inference_pool = InferencePoolRef(
            ip_name, _get(ip_raw, "namespace", path + ".inferencePool.", str, "default"), group
        )
    eps_raw = raw.get("endpoints")
    if inference_pool is not None and eps_raw is None:
        eps_raw = []
    elif not isinstance(eps_raw, list) or not eps_raw:
        raise GatewayConfigError(path + ".endpoints", "expected a non-empty list of host:port")
    endpoints = [normalise_endpoint(e, f"{path}.endpoints[{i}]") for i, e in enumerate(eps_raw)]
    if len(set(endpoints)) != len(endpoints):
        raise GatewayConfigError(path + ".endpoints", "lists an endpoint twice")
    schemes = {endpoint_scheme(e) for e in eps_raw}
    if len(schemes) > 1:
        raise GatewayConfigError(
            path + ".endpoints", "mixes http:// and https:// endpoints; use one pool each"
        )
    scheme = schemes.pop() if schemes else "http"
    ca_file = _get(raw, "caFile", path + ".", str)
    if ca_file is not None:
        ca_file = os.path.join(base_dir, ca_file)
        if not os.path.isfile(ca_file):
            raise GatewayConfigError(path + ".caFile", f"no such file {ca_file}")
    models = _string_list(raw.get("models"), path + ".models")
    if not models:
        raise GatewayConfigError(path + ".models", "list at least one model the pool serves")
    adapters = _string_list(raw.get("adapters", []), path + ".adapters")
    policy = _get(raw, "policy", path + ".", str, "kvgate")
    if policy not in POLICIES:
        raise GatewayConfigError(path + ".policy", f"{policy!r} is not one of {', '.join(POLICIES)}")
    inline = raw.get("endpointPickerConfig")
    file_ = raw.get("endpointPickerConfigFile")
    if inline is not None and file_ is not None:
        raise GatewayConfigError(path + ".endpointPickerConfig", "give it inline or as a file, not both")
    picker: dict[str, Any] | None = None
    if inline is not None:
        if not isinstance(inline, dict):
            raise GatewayConfigError(path + ".endpointPickerConfig", "expected a mapping")
        picker = inline
    elif file_ is not None:
        if not isinstance(file_, str):
            raise GatewayConfigError(path + ".endpointPickerConfigFile", "expected a file path")
        picker = _load_yaml(os.path.join(base_dir, file_), path + ".endpointPickerConfigFile")
        if picker is None:  # (a file truncated before its write, or only comments: never "no picker")
            raise GatewayConfigError(
                path + ".endpointPickerConfigFile", f"{file_} holds no EndpointPickerConfig (empty)"
            )
    pass_priority = _get(raw, "passPriority", path + ".", bool, False)
    if pass_priority:
        check_pass_priority(engine, path + ".passPriority")
    beside = (
        None
        if picker is None or "policy" not in raw
        else ("endpointPickerConfig" if inline is not None else "endpointPickerConfigFile")
    )
    return PoolConfig(
        name, endpoints, models, adapters, engine, policy, picker, inference_pool, scheme, ca_file,
        pass_priority=pass_priority, policy_beside=beside,
    )  # fmt: skip


# ``passPriority`` sends the priority with vLLM's sign (lower runs first). SGLang's default is the
# opposite (``schedule_low_priority_values_first`` is off: higher first), so the same body would run
# critical work last there; the other engines' priority fields are not known. vLLM only, then.
PASS_PRIORITY_ENGINES = ("vllm",)


def check_pass_priority(engine: str, key: str) -> None:
    """Refuse ``passPriority`` (``key``) for a pool whose engine is not one it knows the sign for."""
    if engine not in PASS_PRIORITY_ENGINES:
        raise GatewayConfigError(
            key,
            f"only for engine vllm (this pool's engine is {engine!r}): the priority is sent negated, as vLLM "
            "runs a lower value first; other engines order it differently or not at all",
        )


def _parse_rewrite(raw: Any, path: str) -> RewriteRule:
    if not isinstance(raw, dict):
        raise GatewayConfigError(path, "expected a mapping")
    _check_keys(raw, ("matches", "targets"), path + ".")
    matches: list[str] = []
    for i, m in enumerate(raw.get("matches") or []):
        mp = f"{path}.matches[{i}]"
        model = m.get("model") if isinstance(m, dict) else None
        if not isinstance(model, dict) or not isinstance(model.get("value"), str) or not model["value"]:
            raise GatewayConfigError(mp + ".model.value", "expected a model name")
        if model.get("type", "Exact") != "Exact":
            raise GatewayConfigError(mp + ".model.type", "only 'Exact' is supported")
        matches.append(model["value"])
    targets_raw = raw.get("targets")
    if not isinstance(targets_raw, list) or not targets_raw:
        raise GatewayConfigError(path + ".targets", "expected a non-empty list of {modelRewrite, weight}")
    targets: list[RewriteTarget] = []
    for i, t in enumerate(targets_raw):
        tp = f"{path}.targets[{i}]"
        if not isinstance(t, dict):
            raise GatewayConfigError(tp, "expected a mapping")
        _check_keys(t, ("modelRewrite", "weight"), tp + ".")
        model = _get(t, "modelRewrite", tp + ".", str)
        if not model:
            raise GatewayConfigError(tp + ".modelRewrite", "required")
        weight = _get(t, "weight", tp + ".", int, 1)
        if not 1 <= weight <= MAX_REWRITE_WEIGHT:
            raise GatewayConfigError(tp + ".weight", f"must be in 1..{MAX_REWRITE_WEIGHT}, got {weight}")
        targets.append(RewriteTarget(model, weight))
    return RewriteRule(matches, targets)


# ``limits``: yaml key -> (attribute, type, zero allowed); public: a reload names the keys it changed.
LIMIT_KEYS: dict[str, tuple[str, type | tuple[type, ...], bool]] = {
    # yaml key: (attribute, type, zero allowed)
    "maxBodyBytes": ("max_body_bytes", int, False),
    "maxConcurrentRequests": ("max_concurrent_requests", int, False),
    "requestTimeoutSeconds": ("request_timeout_s", (int, float), True),
    "idleTimeoutSeconds": ("idle_timeout_s", (int, float), False),
    "connectTimeoutSeconds": ("connect_timeout_s", (int, float), False),
    "maxAttempts": ("max_attempts", int, False),
    "drainTimeoutSeconds": ("drain_timeout_s", (int, float), True),
    "keepAliveSeconds": ("keepalive_s", (int, float), False),
    "headerTimeoutSeconds": ("header_timeout_s", (int, float), False),
    "bodyTimeoutSeconds": ("body_timeout_s", (int, float), False),
    "sendTimeoutSeconds": ("send_timeout_s", (int, float), False),
    "writeBufferBytes": ("write_buffer_bytes", int, False),
    "maxConnections": ("max_connections", int, False),
    "maxBufferedBytes": ("max_buffered_bytes", int, False),
    "maxWaitingBytesPerClient": ("max_waiting_bytes_per_client", int, True),
    "responseTurns": ("response_turns", int, True),
}
# Keys once accepted and ignored: refused with a reason rather than silently doing nothing.
_UNSUPPORTED = {
    "limits.maxConnectionsPerEndpoint": "not supported (upstream connections are pooled per endpoint "
    "without a cap); remove it",
}
_HEALTH_KEYS: dict[str, tuple[str, type | tuple[type, ...], bool]] = {
    "ejectAfterFailures": ("eject_after_failures", int, False),
    "ejectBaseSeconds": ("eject_base_s", (int, float), False),
    "ejectMaxSeconds": ("eject_max_s", (int, float), False),
    "maxEjectionPercent": ("max_ejection_percent", (int, float), True),
    "probeTimeoutSeconds": ("probe_timeout_s", (int, float), False),
    "scrapeFailures": ("scrape_failures", int, False),
    "metricsStalenessSeconds": ("metrics_staleness_s", (int, float), False),
}


def budget_below_body(limits: Limits) -> str:
    """Why ``maxBufferedBytes`` < ``maxBodyBytes`` is refused (s17-qafix-bc L1)."""
    return (
        f"must be >= limits.maxBodyBytes ({limits.max_body_bytes}), got {limits.max_buffered_bytes}: "
        "a body between the two could never be held, and would be told to retry (503) forever"
    )


def _fill(
    target: Any, raw: Any, keys: dict[str, tuple[str, type | tuple[type, ...], bool]], path: str
) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise GatewayConfigError(path, "expected a mapping")
    extra = ("probePath",) if keys is _HEALTH_KEYS else ()
    for key in raw:
        reason = _UNSUPPORTED.get(f"{path}.{key}")
        if reason is not None:
            raise GatewayConfigError(f"{path}.{key}", reason)
    _check_keys(raw, (*keys, *extra), path + ".")
    for key, (attr, kind, zero_ok) in keys.items():
        value = _get(raw, key, path + ".", kind)
        if value is not None:
            setattr(target, attr, _positive(value, f"{path}.{key}", allow_zero=zero_ok))
    if "probePath" in raw:
        probe = _get(raw, "probePath", path + ".", str)
        if not probe.startswith("/"):
            raise GatewayConfigError(path + ".probePath", "must start with '/'")
        target.probe_path = probe


def parse_gateway_config(raw: Any, base_dir: str = ".") -> GatewayConfig:
    """Validate a decoded YAML document into a ``GatewayConfig`` (raises ``GatewayConfigError``)."""
    if not isinstance(raw, dict):
        raise GatewayConfigError("(top level)", "expected a mapping")
    allowed = (
        "listen",
        "pools",
        "objectives",
        "rewrites",
        "limits",
        "health",
        "scrapeIntervalSeconds",
        "rewriteSeed",
        "sessionHeader",
        "auth",
        "rateLimits",
        "hideInternalAddresses",
        "accessLog",
        "kubernetes",
    )
    _check_keys(raw, allowed, "")
    pools_raw = raw.get("pools")
    if not isinstance(pools_raw, list) or not pools_raw:
        raise GatewayConfigError("pools", "expected a non-empty list of pools")
    pools = [_parse_pool(p, f"pools[{i}]", base_dir) for i, p in enumerate(pools_raw)]
    seen_pools: set[str] = set()
    served: dict[str, str] = {}
    for i, pool in enumerate(pools):
        if pool.name in seen_pools:
            raise GatewayConfigError(f"pools[{i}].name", f"duplicate pool name {pool.name!r}")
        seen_pools.add(pool.name)
        for model in (*pool.models, *pool.adapters):
            if model in served:
                raise GatewayConfigError(
                    f"pools[{i}]", f"model {model!r} is already served by pool {served[model]!r}"
                )
            served[model] = pool.name

    cfg = GatewayConfig(pools=pools)
    listen = raw.get("listen")
    if listen is not None:
        if not isinstance(listen, dict):
            raise GatewayConfigError("listen", "expected a mapping")
        keys = ("host", "port", "adminPort", "workers", "minReadyWorkers", "workerTimeoutSeconds")
        _check_keys(listen, keys, "listen.")
        cfg.host = _get(listen, "host", "listen.", str, cfg.host)
        cfg.port = _port(_get(listen, "port", "listen.", int, cfg.port), "listen.port")
        admin = _get(listen, "adminPort", "listen.", int)
        cfg.admin_port = None if admin is None else _port(admin, "listen.adminPort")
        cfg.workers = _workers(_get(listen, "workers", "listen.", int, cfg.workers), "listen.workers")
        # Only its range here: ``--workers`` may still raise the count (``kvgate serve``'s build_config
        # checks it against the final one).
        least = _get(listen, "minReadyWorkers", "listen.", int, 1)
        cfg.min_ready_workers = min_ready_workers(least, MAX_WORKERS, "listen.minReadyWorkers")
        bound = _get(listen, "workerTimeoutSeconds", "listen.", (int, float), WORKER_TIMEOUT_S)
        cfg.worker_timeout_s = worker_timeout(bound, "listen.workerTimeoutSeconds")

    objectives = raw.get("objectives") or []
    if not isinstance(objectives, list):
        raise GatewayConfigError("objectives", "expected a list of {name, priority}")
    for i, o in enumerate(objectives):
        op = f"objectives[{i}]"
        if not isinstance(o, dict):
            raise GatewayConfigError(op, "expected a mapping")
        _check_keys(o, ("name", "priority"), op + ".")
        name = _get(o, "name", op + ".", str)
        if not name:
            raise GatewayConfigError(op + ".name", "required")
        if name in cfg.objectives:
            raise GatewayConfigError(op + ".name", f"duplicate objective {name!r}")
        cfg.objectives[name] = _get(o, "priority", op + ".", int, 0)

    rewrites = raw.get("rewrites") or []
    if not isinstance(rewrites, list):
        raise GatewayConfigError("rewrites", "expected a list of rules")
    cfg.rewrites = [_parse_rewrite(r, f"rewrites[{i}]") for i, r in enumerate(rewrites)]
    for i, rule in enumerate(cfg.rewrites):
        for j, t in enumerate(rule.targets):
            if t.model not in served:
                raise GatewayConfigError(
                    f"rewrites[{i}].targets[{j}].modelRewrite", f"no pool serves model {t.model!r}"
                )

    _fill(cfg.limits, raw.get("limits"), LIMIT_KEYS, "limits")
    if cfg.limits.max_buffered_bytes < cfg.limits.max_body_bytes:
        raise GatewayConfigError("limits.maxBufferedBytes", budget_below_body(cfg.limits))
    _fill(cfg.health, raw.get("health"), _HEALTH_KEYS, "health")
    if cfg.health.eject_max_s < cfg.health.eject_base_s:
        raise GatewayConfigError("health.ejectMaxSeconds", "must be >= ejectBaseSeconds")
    if not 0 <= cfg.health.max_ejection_percent <= 100:
        raise GatewayConfigError("health.maxEjectionPercent", "must be in 0..100")
    interval = _get(raw, "scrapeIntervalSeconds", "", (int, float))
    if interval is not None:
        cfg.scrape_interval_s = _positive(interval, "scrapeIntervalSeconds")
    cfg.rewrite_seed = _get(raw, "rewriteSeed", "", int)
    header = _get(raw, "sessionHeader", "", str)
    if header:
        cfg.session_header = header.lower()
    _parse_access(cfg, raw, base_dir)
    _parse_kubernetes(cfg, raw)
    return cfg


def _parse_kubernetes(cfg: GatewayConfig, raw: Mapping[str, Any]) -> None:
    """``kubernetes``: the staleness settings of pools with ``inferencePool`` (``--kube-stale-after``,
    ``--kube-stale-not-ready-after``, which override them). Only their type is checked here; their values
    are checked with the flags' rules where the flags are (``kvgate.k8s.stalepolicy``, by the command line),
    naming these keys."""
    kube = raw.get("kubernetes")
    if kube is None:
        return
    if not isinstance(kube, dict):
        raise GatewayConfigError("kubernetes", "expected a mapping")
    _check_keys(kube, ("staleAfterSeconds", "staleNotReadyAfterSeconds"), "kubernetes.")
    stale = _get(kube, "staleAfterSeconds", "kubernetes.", (int, float))
    if stale is not None:
        cfg.kube_stale_after_s = float(stale)
    not_ready = _get(kube, "staleNotReadyAfterSeconds", "kubernetes.", (int, float))
    if not_ready is not None:
        cfg.kube_stale_not_ready_after_s = float(not_ready)


def _parse_access(cfg: GatewayConfig, raw: Mapping[str, Any], base_dir: str) -> None:
    """``auth``, ``rateLimits`` and ``hideInternalAddresses`` (see kvgate.gateway.tenants)."""
    auth = raw.get("auth")
    if auth is not None:
        if not isinstance(auth, dict):
            raise GatewayConfigError("auth", "expected a mapping")
        _check_keys(auth, ("apiKeysFile", "apiKeysEnv"), "auth.")
        file_ = _get(auth, "apiKeysFile", "auth.", str)
        cfg.api_keys_file = os.path.join(base_dir, file_) if file_ else None
        cfg.api_keys_env = _get(auth, "apiKeysEnv", "auth.", str)
        if not cfg.api_keys_file and not cfg.api_keys_env:
            raise GatewayConfigError("auth", "give apiKeysFile and/or apiKeysEnv")
    limits = raw.get("rateLimits")
    if limits is not None:
        if not isinstance(limits, dict):
            raise GatewayConfigError("rateLimits", "expected a mapping")
        _check_keys(limits, ("requestsPerMinute", "tokensPerMinute"), "rateLimits.")
        for key, attr in (
            ("requestsPerMinute", "rate_requests_per_minute"),
            ("tokensPerMinute", "rate_tokens_per_minute"),
        ):
            value = _get(limits, key, "rateLimits.", (int, float))
            if value is not None:
                setattr(cfg, attr, float(_positive(value, f"rateLimits.{key}", allow_zero=True)))
    cfg.hide_internal_addresses = bool(_get(raw, "hideInternalAddresses", "", bool, False))
    cfg.access_log = bool(_get(raw, "accessLog", "", bool, False))


MAX_WORKERS = 64


def _workers(value: int, key: str) -> int:
    if not 1 <= value <= MAX_WORKERS:
        raise GatewayConfigError(key, f"workers must be in 1..{MAX_WORKERS}, got {value}")
    return value


# The precise plugins whose ``eventsBind`` makes the gateway bind each engine's KV-event address.
_BINDING_PLUGINS = ("precise-prefix-cache-scorer", "precise-prefix-cache-producer")


def check_events_bind(cfg: GatewayConfig, workers: int) -> None:
    """With more than one worker, refuse a pool's precise scorer that binds its engines' KV-event addresses
    (``eventsBind: true``): every worker subscribes to each engine itself, and only one process can bind an
    address, so the other workers' subscribers retry for good and never see an event (and a reload in the
    worker that holds it, a new index's subscriber, races them for it). The same check at a reload (the
    supervisor's load), so none is sent to the workers. ``GatewayConfigError`` naming the key."""
    if workers <= 1:
        return
    for i, pool in enumerate(cfg.pools):
        plugins = (pool.picker_config or {}).get("plugins")
        for j, plugin in enumerate(plugins if isinstance(plugins, list) else []):
            if not isinstance(plugin, Mapping):
                continue  # (the picker's own load names it)
            params = plugin.get("parameters")
            if (
                plugin.get("type") in _BINDING_PLUGINS
                and isinstance(params, Mapping)
                and params.get("eventsBind") is True
            ):
                raise GatewayConfigError(
                    f"pools[{i}].endpointPickerConfig.plugins[{j}].parameters.eventsBind",
                    f"true with {workers} workers: each worker subscribes to the engines' KV events itself "
                    "and only one process can bind an address; run one worker, or let the engines bind "
                    "(eventsBind: false, vLLM's tcp://*:PORT)",
                )


def min_ready_workers(value: int, workers: int, key: str) -> int:
    """``value`` in 1..``workers`` (the final count, flags applied; ``MAX_WORKERS`` for a file alone)."""
    if not 1 <= value <= workers:
        what = f"workers ({workers})" if workers < MAX_WORKERS else str(MAX_WORKERS)
        raise GatewayConfigError(key, f"must be in 1..{what}, got {value}")
    return value


def worker_timeout(value: float, key: str) -> float:
    """0 (never) or at least ``MIN_WORKER_TIMEOUT_S`` (a few heartbeats: a worker busy for a moment is no
    wedge)."""
    if value != 0 and not MIN_WORKER_TIMEOUT_S <= value <= MAX_WORKER_TIMEOUT_S:
        least, most = MIN_WORKER_TIMEOUT_S, MAX_WORKER_TIMEOUT_S
        raise GatewayConfigError(key, f"must be 0 (never) or in {least:g}..{most:g} seconds, got {value}")
    return float(value)


def _port(value: int, key: str) -> int:
    if not 0 <= value < 65536:
        raise GatewayConfigError(key, f"port must be in 0..65535, got {value}")
    return value


def _load_yaml(path: str, key: str) -> Any:
    try:
        return yamlload.safe_load(yamlload.read_config(path))
    except OSError as e:
        raise GatewayConfigError(key, f"cannot read {path}: {e.strerror}") from e
    except yamlload.KeyedError as e:  # (a key twice, an overlong integer) --config's key path, or the file's
        if key == "--config":
            raise GatewayConfigError(e.key, e.detail) from e
        raise GatewayConfigError(key, str(e)) from e
    except yaml.YAMLError as e:
        raise GatewayConfigError(key, f"{path} is not valid YAML: {e}") from e
    except yamlload.TooLargeError as e:
        raise GatewayConfigError(key, str(e)) from e
    except ValueError as e:  # an integer past Python's 4300 digits (PyYAML's int() of it)
        raise GatewayConfigError(key, f"{path}: {e}") from e


def load_gateway_yaml(path: str) -> Any:
    """The decoded YAML of a ``--config`` file, unchecked (``parse_gateway_config`` checks it)."""
    return _load_yaml(path, "--config")


def load_gateway_config(path: str) -> GatewayConfig:
    raw = load_gateway_yaml(path)
    return parse_gateway_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_rewrite_rule(raw: Any, path: str) -> RewriteRule:
    """One InferenceModelRewrite rule (``matches``, ``targets``): the config file's format, also read from
    Kubernetes objects (``path`` names where it came from in errors)."""
    return _parse_rewrite(raw, path)


def config_from_flags(
    endpoints: str,
    models: Sequence[str],
    policy: str = "kvgate",
    engine: str = "vllm",
    adapters: Sequence[str] = (),
) -> GatewayConfig:
    """The config-free start: one pool named ``default`` from ``--endpoints`` and ``--model``."""
    raw = {
        "pools": [
            {
                "name": "default",
                "engine": engine,
                "policy": policy,
                "endpoints": [e for e in endpoints.split(",") if e.strip()],
                "models": list(models),
                "adapters": list(adapters),
            }
        ],
    }
    try:
        return parse_gateway_config(raw)
    except GatewayConfigError as e:
        # Point at the flag the user actually typed rather than the synthetic YAML key.
        key = {
            "endpoints": "--endpoints",
            "models": "--model",
            "policy": "--policy",
            "engine": "--engine",
            "adapters": "--adapter",
        }
        for k, flag in key.items():
            if e.key.startswith(f"pools[0].{k}"):
                raise GatewayConfigError(flag, str(e).split(": ", 1)[1]) from None
        raise
