"""What `kvgate epp` serves: one InferencePool's endpoints, its picker config and request policy.

Two ways in, mirroring the reference EPP and the gateway:
- config-free flags: ``--endpoints a:p,b:p --model NAME [--policy kvgate | --config-file EPC.yaml]``;
- ``--config gw.yaml``: the gateway's config format (``kvgate.config.gateway``: pools, objectives,
  rewrites); the EPP serves one pool of it (``--pool-name``, or the only one).
An ``EndpointPickerConfig`` (``--config-file`` / ``--config-text``, the reference EPP's flags) replaces
the pool's named policy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvgate import yamlload
from kvgate.config.gateway import (
    GatewayConfig,
    GatewayConfigError,
    InferencePoolRef,
    PoolConfig,
    check_pass_priority,
    config_from_flags,
    ignored_policy,
    load_gateway_yaml,
    parse_gateway_config,
)
from kvgate.scheduling.framework import ConfigError

log = logging.getLogger(__name__)

CONFORMANCE_FILTER = "header-based-testing-filter"


class EppConfigError(ConfigError):
    """A ``kvgate epp`` flag or config problem; ``.key`` names the flag or key path."""


@dataclass(slots=True)
class EppConfig:
    pool: PoolConfig
    gateway: GatewayConfig
    picker_config: dict[str, Any] | None = None
    conformance_hooks: bool = False
    max_body_bytes: int = 64 << 20
    # ``--config``'s ``limits.maxBufferedBytes``, ``limits.drainTimeoutSeconds`` and ``scrapeIntervalSeconds``
    # (the flags override them).
    max_buffered_bytes: int = 1 << 30
    drain_timeout_s: float = 30.0
    scrape_interval_s: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def objectives(self) -> dict[str, int]:
        return self.gateway.objectives


# What ``--config`` (``kvgate serve``'s file) gives the EPP: the served pool, ``objectives``, ``rewrites``,
# ``rewriteSeed``, ``sessionHeader``, ``scrapeIntervalSeconds``, ``kubernetes``, and these ``limits`` and
# ``health`` keys (docs/epp.md). The rest is the gateway's own work: refused, naming each key, rather than
# parsed and silently not applied (s19-qa M2: an operator moving a gateway file behind Envoy must not
# believe its API keys, tenant limits and concurrency cap still hold).
EPP_LIMITS = ("maxBodyBytes", "maxBufferedBytes", "drainTimeoutSeconds")
# (every ``health`` key since review s30-qa30 Q2: the EPP ejects and probes by the answers' statuses)
EPP_HEALTH = (
    "scrapeFailures",
    "metricsStalenessSeconds",
    "ejectAfterFailures",
    "ejectBaseSeconds",
    "ejectMaxSeconds",
    "maxEjectionPercent",
    "probePath",
    "probeTimeoutSeconds",
)
_ENVOY = "Envoy in front proxies the request"
NOT_APPLIED = {
    "listen": "not applied by kvgate epp (it listens where --host, --port, --grpc-health-port and "
    "--metrics-port say, in one process)",
    "auth": "not applied by kvgate epp: it sees Envoy, not the client; authenticate clients at Envoy, or "
    "serve the file with kvgate serve",
    "rateLimits": "not applied by kvgate epp: rate-limit at Envoy (its rate-limit filter); the EPP's own "
    "admission is flow control (featureGates: [flowControl] in an EndpointPickerConfig, docs/flowcontrol.md)",
    "hideInternalAddresses": "not applied by kvgate epp (a kvgate serve option for the answers it writes; "
    "Envoy writes the client's answers here)",
    "limits": f"not applied by kvgate epp: {_ENVOY} (set its route timeouts, retries and circuit breakers); "
    f"the EPP applies {', '.join(f'limits.{k}' for k in EPP_LIMITS)} only",
    "health": f"not applied by kvgate epp: it applies {', '.join(f'health.{k}' for k in EPP_HEALTH)} only",
    # (the EPP does bound waiting bodies, with no knob: saying "Envoy does it" misled; review s25-rev-gw25 L2)
    "limits.maxWaitingBytesPerClient": "not applied by kvgate epp: its share is fixed, a quarter of "
    "--max-buffered-bytes per fairness id (past half of it; docs/epp.md)",
}


def not_applied(raw: Any) -> list[tuple[str, str]]:
    """The keys of a (valid) gateway config document ``kvgate epp`` would not apply, each with why."""
    out: list[tuple[str, str]] = []
    for key in ("listen", "auth", "rateLimits", "hideInternalAddresses"):
        if key in raw and not (key == "hideInternalAddresses" and raw[key] is False):
            out.append((key, NOT_APPLIED[key]))
    for section, applied in (("limits", EPP_LIMITS), ("health", EPP_HEALTH)):
        for key in raw.get(section) or {}:
            if key not in applied:
                name = f"{section}.{key}"
                out.append((name, NOT_APPLIED.get(name, NOT_APPLIED[section])))
    return out


def _picker_config(path: str | None, text: str | None) -> dict[str, Any] | None:
    if path and text:
        raise EppConfigError("--config-file and --config-text: give one")
    raw: Any = None
    try:
        if path:
            raw = yamlload.safe_load(yamlload.read_config(path))
        elif text:
            raw = yamlload.safe_load(text)
    except OSError as e:
        raise EppConfigError(f"--config-file: cannot read {path}: {e.strerror}") from e
    except yamlload.KeyedError as e:  # (a key given twice, an integer too long: rev-d36 F3)
        raise EppConfigError(e.key, e.detail) from e
    except yaml.YAMLError as e:
        raise EppConfigError(f"EndpointPickerConfig is not valid YAML: {e}") from e
    except ValueError as e:  # (over the size limit, not UTF-8, an integer of more digits than int() reads)
        raise EppConfigError(f"{'--config-file' if path else '--config-text'}: {e}") from e
    if raw is None:
        if path or text:  # (an empty or comments-only file is no config: not "use the policy"; qa36a F5)
            flag, what = ("--config-file", path) if path else ("--config-text", "the text")
            raise EppConfigError(f"{flag}: {what} holds no EndpointPickerConfig (empty, or only comments)")
        return None
    if not isinstance(raw, dict):
        raise EppConfigError("EndpointPickerConfig must be a mapping")
    kind = raw.get("kind", "EndpointPickerConfig")
    if kind != "EndpointPickerConfig":
        raise EppConfigError(f"expected kind EndpointPickerConfig, got {kind!r}")
    return raw


def uses_conformance_filter(picker_config: dict[str, Any] | None) -> bool:
    plugins = (picker_config or {}).get("plugins") or []
    return any(isinstance(p, dict) and p.get("type") == CONFORMANCE_FILTER for p in plugins)


def load(
    *,
    config: str | None,
    pool_name: str | None,
    endpoints: str | None,
    models: list[str],
    policy: str,
    engine: str,
    config_file: str | None,
    config_text: str | None,
    conformance: bool,
    adapters: list[str] | None = None,
    session_header: str | None = None,
    pool_namespace: str = "default",
    pass_priority: bool = False,
    shared_config: bool = False,
) -> EppConfig:
    try:
        if pool_name and not config and not endpoints:
            # The reference EPP's way: the pool's endpoints come from its InferencePool in Kubernetes.
            ref = InferencePoolRef(pool_name, pool_namespace)
            pool0 = PoolConfig(
                pool_name, [], models or ["*"], list(adapters or ()), engine, policy, None, ref
            )
            gw = GatewayConfig(pools=[pool0])
        elif config:
            raw = load_gateway_yaml(config)
            gw = parse_gateway_config(raw, base_dir=os.path.dirname(os.path.abspath(config)))
            refused = not_applied(raw)
            if refused and shared_config:  # (--shared-config: kvgate serve's file, its keys left to it)
                for key, why in refused:
                    log.warning("%s: %s (--shared-config: left to kvgate serve)", key, why)
            elif refused:
                hint = "a file shared with kvgate serve: --shared-config warns of these keys instead"
                raise EppConfigError("\n".join([*(f"{key}: {why}" for key, why in refused), hint]))
        elif endpoints:
            gw = config_from_flags(
                endpoints, models or ["*"], policy=policy, engine=engine, adapters=adapters or ()
            )
        else:
            raise EppConfigError("give --pool-name (Kubernetes), --endpoints (and --model) or --config")
    except GatewayConfigError as e:
        raise EppConfigError(str(e)) from e
    if session_header:
        gw.session_header = session_header.lower()
    if pool_name:
        matches = [p for p in gw.pools if p.name == pool_name]
        if not matches and config:
            raise EppConfigError(f"--pool-name: no pool {pool_name!r} in {config}")
        pool = matches[0] if matches else gw.pools[0]
    elif len(gw.pools) == 1:
        pool = gw.pools[0]
    else:
        names = ", ".join(p.name for p in gw.pools)
        raise EppConfigError(f"the config has several pools ({names}); choose one with --pool-name")
    if pass_priority:  # --pass-priority (as pools[].passPriority)
        try:
            check_pass_priority(pool.engine, "--pass-priority")
        except GatewayConfigError as e:
            raise EppConfigError(str(e)) from e
        pool.pass_priority = True
    picker = _picker_config(config_file, config_text) or pool.picker_config
    if pool.picker_config is not None and (line := ignored_policy(pool)) is not None:
        log.warning("%s", line)
    return EppConfig(
        pool=pool,
        gateway=gw,
        picker_config=picker,
        conformance_hooks=conformance or uses_conformance_filter(picker),
        max_body_bytes=gw.limits.max_body_bytes if config else 64 << 20,
        max_buffered_bytes=gw.limits.max_buffered_bytes,
        drain_timeout_s=gw.limits.drain_timeout_s,
        scrape_interval_s=gw.scrape_interval_s,
    )
