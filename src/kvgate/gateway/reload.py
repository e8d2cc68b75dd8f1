"""Dynamic endpoints without a restart: re-read ``--config`` on SIGHUP or when the file changes.

Applied live: each pool's ``endpoints`` (``EndpointStore.sync``: the scraper, KV-event sources and
pickers follow through the store's change listeners; an endpoint kept keeps its metrics and in-flight
accounting), and ``limits``, every knob (``GatewayServer.apply_limits``: the client-facing fronts' body
cap, deadlines and connection cap, the proxy's timeouts and caps), logged as ``config reload: limits
applied: ...``. Everything else that differs from the file the process runs (the whole config less
those two: pools, models, policies, pickers, health, objectives, rewrites, auth, rate limits,
``listen``, ...) is logged as ``config reload: changed ...; restart to apply``. A file that fails
validation is logged and ignored: the running config stays.

``ConfigWatch`` is the trigger and the validation (SIGHUP, the file's modification time, the one
error log); ``ConfigReloader`` applies a valid file to one gateway process. ``kvgate serve --workers``
watches and validates in the supervisor, which writes the config it checked to a private snapshot; each
worker's ``ConfigReloader`` reads that snapshot, never the user's file (``gateway.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Sequence

from kvgate.config.gateway import (
    LIMIT_KEYS,
    GatewayConfig,
    GatewayConfigError,
    Limits,
    PoolConfig,
    load_gateway_config,
)
from kvgate.datalayer.store import make_endpoint
from kvgate.gateway.pools import Pool

log = logging.getLogger("kvgate.gateway.reload")

# The YAML names of ``limits`` (for the log): attribute -> key.
_LIMIT_NAMES = {attr: key for key, (attr, _, _) in LIMIT_KEYS.items()}
# The YAML names of the rest (for the "restart to apply" log); an attribute missing here logs as itself.
_NAMES = {
    "host": "listen.host", "port": "listen.port", "admin_port": "listen.adminPort",
    "workers": "listen.workers", "min_ready_workers": "listen.minReadyWorkers",
    "scrape_interval_s": "scrapeIntervalSeconds",
    "rewrite_seed": "rewriteSeed", "session_header": "sessionHeader",
    "api_keys_file": "auth.apiKeysFile", "api_keys_env": "auth.apiKeysEnv",
    "rate_requests_per_minute": "rateLimits.requestsPerMinute",
    "rate_tokens_per_minute": "rateLimits.tokensPerMinute",
    "hide_internal_addresses": "hideInternalAddresses",
}  # fmt: skip
_POOL_NAMES = {
    "picker_config": "endpointPickerConfig", "inference_pool": "inferencePool", "ca_file": "caFile",
    "endpoint_labels": "endpointLabels", "pass_priority": "passPriority",
}  # fmt: skip
# What a reload applies (compared and applied on their own), and what is not from the file.
_APPLIED = {"pools", "limits"}
_POOL_APPLIED = {"name", "endpoints"}


# A reload that keeps failing to apply (OSError) is logged at its 1st, 2nd, 4th, ... failure, then every
# this many (at the 2 s poll: about every 4 min).
_LOG_EVERY = 128


def _describe(changed: dict[str, tuple[float, float]]) -> str:
    """``maxBodyBytes 8388608 -> 1024, ...``: the YAML names, as in the file."""
    return ", ".join(f"{_LIMIT_NAMES.get(k, k)} {a} -> {b}" for k, (a, b) in changed.items())


def _live_endpoints(old: PoolConfig, new: PoolConfig) -> bool:
    """A pool's endpoints apply live when both files list them (not from an InferencePool)."""
    return old.inference_pool is None and new.inference_pool is None


def not_applied(old: GatewayConfig, new: GatewayConfig, limits_live: bool = True) -> list[str]:
    """What differs between two files that a reload does not apply (YAML names): the whole config less
    each pool's endpoints (when listed in both) and, with ``limits_live``, ``limits``."""
    out = [
        _NAMES.get(f.name, f.name)
        for f in dataclasses.fields(GatewayConfig)
        if f.name not in _APPLIED and getattr(old, f.name) != getattr(new, f.name)
    ]
    if not limits_live and old.limits != new.limits:
        out.append("limits")
    olds = {pc.name: pc for pc in old.pools}
    news = {pc.name: pc for pc in new.pools}
    out += [f"pools[{n}] (new)" for n in news if n not in olds]
    out += [f"pools[{n}] (removed)" for n in olds if n not in news]
    for name in olds.keys() & news.keys():
        o, n = olds[name], news[name]
        for f in dataclasses.fields(PoolConfig):
            if f.name in _POOL_APPLIED and (f.name != "endpoints" or _live_endpoints(o, n)):
                continue
            if getattr(o, f.name) != getattr(n, f.name):
                out.append(f"pools[{name}].{_POOL_NAMES.get(f.name, f.name)}")
    return out


def take_applied(cfg: GatewayConfig, new: GatewayConfig, limits: bool = True) -> None:
    """Write onto ``cfg`` what a reload of ``new`` applies live: each pool's endpoints, ``limits``."""
    news = {pc.name: pc for pc in new.pools}
    for pc in cfg.pools:
        got = news.get(pc.name)
        if got is not None and _live_endpoints(pc, got):
            pc.endpoints = list(got.endpoints)
    if limits:
        cfg.limits = copy.deepcopy(new.limits)


class ConfigWatch:
    """Re-read ``path`` on ``trigger()`` (SIGHUP) and, with ``poll_s``, when its modification time
    changes; a file that fails validation is logged and ignored, a valid one goes to ``apply``.

    ``mtime``: the file's modification time before the running config was read from it (``kvgate
    serve`` stats it before start-up's probes and pickers), so an edit made meanwhile is applied at the
    first poll; without it, the time now. ``load``: how to read ``path`` (default: validate it as a
    gateway file)."""

    def __init__(
        self,
        path: str,
        poll_s: float | None = 2.0,
        mtime: float | None = None,
        load: Callable[[str], GatewayConfig] = load_gateway_config,
    ) -> None:
        self.path = path
        self.poll_s = poll_s  # None: on trigger() only
        self.reloads = 0
        self.failures = 0
        self.apply_failures = 0  # in a row, that could not be applied (OSError): what the log backs off on
        self._load = load
        self._mtime = self._stat() if mtime is None else mtime
        self._wake = asyncio.Event()

    def _stat(self) -> float | None:
        return file_mtime(self.path)

    def trigger(self) -> None:
        """SIGHUP: reload now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            forced = self._wake.is_set()
            self._wake.clear()
            mtime = self._stat()
            if forced or (mtime is not None and mtime != self._mtime):
                self._mtime = mtime
                self.reload()

    def reload(self) -> bool:
        try:
            new = self._load(self.path)
        except GatewayConfigError as e:
            self.failures += 1
            log.error("config reload: %s is invalid, keeping the running config: %s", self.path, e)
            return False
        try:
            self.apply(new)
        except OSError as e:
            # E.g. the supervisor's snapshot cannot be written (/tmp full): the watch must outlive it, and
            # the next poll tries again (the file's change is not taken as seen). Logged at the 1st, 2nd,
            # 4th, ... failure in a row, then every ``_LOG_EVERY``th: not a line every poll for hours.
            self.failures += 1
            self.apply_failures += 1
            self._mtime = None
            n = self.apply_failures
            if n % _LOG_EVERY == 0 or (n < _LOG_EVERY and n & (n - 1) == 0):
                log.error(
                    "config reload: %s could not be applied, keeping the running config: %s%s", self.path, e,
                    f" ({n} failures in a row; retried at every check, logged less often)" if n > 1 else "",
                )  # fmt: skip
            return False
        if self.apply_failures:
            log.warning("config reload: %s applied after %d failures", self.path, self.apply_failures)
            self.apply_failures = 0
        self.reloads += 1
        return True

    def apply(self, new: GatewayConfig) -> None:
        raise NotImplementedError


def file_mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


class ConfigReloader(ConfigWatch):
    """``apply_limits``: the running server's (``GatewayServer.apply_limits``); without one (a reloader
    for endpoints only), a change of ``limits`` is logged as needing a restart.

    ``file_cfg``: the config as the file gave it (before flags and ``--kv-events auto`` changed the
    running one), what a reload is compared with; it takes what each reload applies. Default: a copy of
    ``current``."""

    def __init__(
        self,
        path: str,
        current: GatewayConfig,
        pools: Sequence[Pool],
        poll_s: float | None = 2.0,
        apply_limits: Callable[[Limits], dict[str, tuple[float, float]]] | None = None,
        file_cfg: GatewayConfig | None = None,
        mtime: float | None = None,
        load: Callable[[str], GatewayConfig] = load_gateway_config,
    ) -> None:
        super().__init__(path, poll_s, mtime, load)
        self.current = current
        self.file_cfg = copy.deepcopy(current if file_cfg is None else file_cfg)
        self.apply_limits = apply_limits
        self.pools = {p.name: p for p in pools}

    def apply(self, new: GatewayConfig) -> None:
        olds = {pc.name: pc for pc in self.file_cfg.pools}
        for pc in new.pools:
            pool, old_pc = self.pools.get(pc.name), olds.get(pc.name)
            if pool is None or old_pc is None or not _live_endpoints(old_pc, pc):
                continue
            old = set(pool.cfg.endpoints)
            if set(pc.endpoints) != old:
                pool.store.sync(
                    [make_endpoint(a, pool=pc.name, engine=pool.cfg.engine) for a in pc.endpoints],
                    pool=pc.name,
                )
                log.warning(
                    "config reload: pool %r endpoints +%s -%s",
                    pc.name,
                    sorted(set(pc.endpoints) - old),
                    sorted(old - set(pc.endpoints)),
                )
                pool.cfg.endpoints = list(pc.endpoints)
        if self.apply_limits is not None and new.limits != self.current.limits:
            # It writes them onto the running config (``current``, the server's): once.
            changed = self.apply_limits(new.limits)
            if changed:
                log.warning("config reload: limits applied: %s", _describe(changed))
        unapplied = not_applied(self.file_cfg, new, limits_live=self.apply_limits is not None)
        if unapplied:
            log.warning("config reload: changed %s; restart to apply", ", ".join(unapplied))
        take_applied(self.file_cfg, new, limits=self.apply_limits is not None)


def start_reloader(
    path: str,
    cfg: GatewayConfig,
    pools: Sequence[Pool],
    apply_limits: Callable[[Limits], dict[str, tuple[float, float]]],
    poll_s: float | None = 2.0,
    file_cfg: GatewayConfig | None = None,
    mtime: float | None = None,
    load: Callable[[str], GatewayConfig] = load_gateway_config,
) -> asyncio.Task[None]:
    """One gateway process's reloader, on SIGHUP (and, with ``poll_s``, when the file changes): the
    same for ``kvgate serve`` and for each ``--workers`` worker (which reads the supervisor's snapshot)."""
    cr = ConfigReloader(path, cfg, pools, poll_s, apply_limits, file_cfg, mtime, load)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, cr.trigger)
    return asyncio.create_task(cr.run())
