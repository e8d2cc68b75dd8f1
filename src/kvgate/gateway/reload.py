"""Dynamic endpoints without a restart: re-read ``--config`` on SIGHUP or when the file changes.

Applied live: each pool's ``endpoints`` (``EndpointStore.sync``: the scraper, KV-event sources and
pickers follow through the store's change listeners; an endpoint kept keeps its metrics and in-flight
accounting), and ``limits``, every knob (``GatewayServer.apply_limits``: the client-facing fronts' body
cap, deadlines and connection cap, the proxy's timeouts and caps), logged as ``config reload: limits
applied: ...``. Any other difference (new pools, models, policies, health, objectives) is logged as
needing a restart. A file that fails validation is logged and ignored: the running config stays.

``ConfigWatch`` is the trigger and the validation (SIGHUP, the file's modification time, the one
error log); ``ConfigReloader`` applies a valid file to one gateway process. ``kvgate serve --workers``
watches in the supervisor and has each worker's ``ConfigReloader`` apply it (``gateway.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence

from kvgate.config.gateway import (
    LIMIT_KEYS,
    GatewayConfig,
    GatewayConfigError,
    Limits,
    load_gateway_config,
)
from kvgate.datalayer.store import make_endpoint
from kvgate.gateway.pools import Pool

log = logging.getLogger("kvgate.gateway.reload")

# The YAML names of ``limits`` (for the log): attribute -> key.
_LIMIT_NAMES = {attr: key for key, (attr, _, _) in LIMIT_KEYS.items()}


def _describe(changed: dict[str, tuple[float, float]]) -> str:
    """``maxBodyBytes 8388608 -> 1024, ...``: the YAML names, as in the file."""
    return ", ".join(f"{_LIMIT_NAMES.get(k, k)} {a} -> {b}" for k, (a, b) in changed.items())


class ConfigWatch:
    """Re-read ``path`` on ``trigger()`` (SIGHUP) and, with ``poll_s``, when its modification time
    changes; a file that fails validation is logged and ignored, a valid one goes to ``apply``."""

    def __init__(self, path: str, poll_s: float | None = 2.0) -> None:
        self.path = path
        self.poll_s = poll_s  # None: on trigger() only
        self.reloads = 0
        self.failures = 0
        self._mtime = self._stat()
        self._wake = asyncio.Event()

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

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
            new = load_gateway_config(self.path)
        except GatewayConfigError as e:
            self.failures += 1
            log.error("config reload: %s is invalid, keeping the running config: %s", self.path, e)
            return False
        self.apply(new)
        self.reloads += 1
        return True

    def apply(self, new: GatewayConfig) -> None:
        raise NotImplementedError


class ConfigReloader(ConfigWatch):
    """``apply_limits``: the running server's (``GatewayServer.apply_limits``); without one (a reloader
    for endpoints only), a change of ``limits`` is logged as needing a restart."""

    def __init__(
        self,
        path: str,
        current: GatewayConfig,
        pools: Sequence[Pool],
        poll_s: float | None = 2.0,
        apply_limits: Callable[[Limits], dict[str, tuple[float, float]]] | None = None,
    ) -> None:
        super().__init__(path, poll_s)
        self.current = current
        self.apply_limits = apply_limits
        self.pools = {p.name: p for p in pools}

    def apply(self, new: GatewayConfig) -> None:
        for pc in new.pools:
            pool = self.pools.get(pc.name)
            if pool is None:
                log.warning("config reload: new pool %r needs a restart; ignored", pc.name)
                continue
            old = set(pool.cfg.endpoints)
            if set(pc.endpoints) != old and pc.inference_pool is None:
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
            # The file's picker against the file's: ``--kv-events auto`` may have chosen one at start-up.
            running_picker = None if pool.cfg.picker_from_kv_events else pool.cfg.picker_config
            if (pc.models, pc.adapters, pc.policy, pc.picker_config, pc.engine) != (
                pool.cfg.models,
                pool.cfg.adapters,
                pool.cfg.policy,
                running_picker,
                pool.cfg.engine,
            ):
                log.warning("config reload: pool %r changed beyond its endpoints; restart to apply", pc.name)
        for name in set(self.pools) - {pc.name for pc in new.pools}:
            log.warning("config reload: pool %r was removed from the file; restart to apply", name)
        if new.limits != self.current.limits:
            if self.apply_limits is None:
                log.warning("config reload: limits changed; restart to apply")
            else:
                # It writes them onto the running config (``current``, the server's): once.
                changed = self.apply_limits(new.limits)
                if changed:
                    log.warning("config reload: limits applied: %s", _describe(changed))
        if (new.health, new.objectives) != (self.current.health, self.current.objectives):
            log.warning("config reload: health/objectives changed; restart to apply")


def start_reloader(
    path: str,
    cfg: GatewayConfig,
    pools: Sequence[Pool],
    apply_limits: Callable[[Limits], dict[str, tuple[float, float]]],
    poll_s: float | None = 2.0,
) -> asyncio.Task[None]:
    """One gateway process's reloader, on SIGHUP (and, with ``poll_s``, when the file changes): the
    same for ``kvgate serve`` and for each ``--workers`` worker."""
    cr = ConfigReloader(path, cfg, pools, poll_s=poll_s, apply_limits=apply_limits)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, cr.trigger)
    return asyncio.create_task(cr.run())
