"""What `kvgate epp` serves: one InferencePool's endpoints, its picker config and request policy.

Two ways in, mirroring the reference EPP and the gateway:
- config-free flags: ``--endpoints a:p,b:p --model NAME [--policy kvgate | --config-file EPC.yaml]``;
- ``--config gw.yaml``: the gateway's config format (``kvgate.config.gateway``: pools, objectives,
  rewrites); the EPP serves one pool of it (``--pool-name``, or the only one).
An ``EndpointPickerConfig`` (``--config-file`` / ``--config-text``, the reference EPP's flags) replaces
the pool's named policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from kvgate.config.gateway import (
    GatewayConfig,
    GatewayConfigError,
    InferencePoolRef,
    PoolConfig,
    check_pass_priority,
    config_from_flags,
    load_gateway_config,
)
from kvgate.scheduling.framework import ConfigError

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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def objectives(self) -> dict[str, int]:
        return self.gateway.objectives


def _picker_config(path: str | None, text: str | None) -> dict[str, Any] | None:
    if path and text:
        raise EppConfigError("--config-file and --config-text: give one")
    raw: Any = None
    try:
        if path:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        elif text:
            raw = yaml.safe_load(text)
    except OSError as e:
        raise EppConfigError(f"--config-file: cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise EppConfigError(f"EndpointPickerConfig is not valid YAML: {e}") from e
    if raw is None:
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
            gw = load_gateway_config(config)
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
    return EppConfig(
        pool=pool,
        gateway=gw,
        picker_config=picker,
        conformance_hooks=conformance or uses_conformance_filter(picker),
        max_body_bytes=gw.limits.max_body_bytes if config else 64 << 20,
    )
