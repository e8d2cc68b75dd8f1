"""The EPP's session context: its Director (request control over kvgate's scheduler), the model rewriter
(shared with the gateway: ``kvgate.config.rewrite``), objectives. ("Picker" is a profile's picker plugin
only; what a front door talks to is the Director.)"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from kvgate.config.director import as_config, build_director
from kvgate.config.picker import EndpointPickerConfig
from kvgate.config.rewrite import ModelRewriter
from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.health import HealthPolicy
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.outlier import Outlier
from kvgate.extproc.parsers import ParserRoutes
from kvgate.extproc.session import Observer, SessionContext
from kvgate.openai.request import RequestPolicy
from kvgate.requestcontrol.director import Director


def build_epp_director(
    config: EndpointPickerConfig | Mapping[str, Any] | str | None,
    store: EndpointStore,
    *,
    policy: str = "kvgate",
    clock: Callable[[], float] = time.monotonic,
    pool: str = "",
) -> Director:
    """``config`` is an EndpointPickerConfig (decoded YAML); without one, the named ``policy``. ``pool``: the
    pool's name (flow control's ``inference_pool`` label)."""
    return build_director(config if config is not None else policy, store, clock, pool=pool)


class AddressIndex:
    """``address -> Endpoint`` for the store, rebuilt only when the store changes (not per request)."""

    def __init__(self, store: EndpointStore) -> None:
        self.store = store
        self._version = -1
        self._map: dict[str, Endpoint] = {}

    def __call__(self) -> Mapping[str, Endpoint]:
        if self._version != self.store.version:
            self._map = {e.address: e for e in self.store.all()}
            self._version = self.store.version
        return self._map


def build_context(
    cfg: EppConfig,
    store: EndpointStore,
    *,
    clock: Callable[[], float] = time.monotonic,
    observer: Observer | None = None,
) -> SessionContext:
    # Parsed once here: the director is built from it and the parser chain read off it (``ParserRoutes``).
    picker = as_config(cfg.picker_config if cfg.picker_config is not None else cfg.pool.policy)
    director = build_epp_director(picker, store, policy=cfg.pool.policy, clock=clock, pool=cfg.pool.name)
    health = cfg.gateway.health  # the same thresholds as kvgate serve (kvgate.datalayer.health)
    director.health = HealthPolicy(health.scrape_failures, health.metrics_staleness_s)
    rewriter = ModelRewriter(cfg.gateway.rewrites, seed=cfg.gateway.rewrite_seed)
    policy = RequestPolicy(
        frozenset(cfg.pool.adapters), cfg.gateway.session_header, dict(cfg.objectives), cfg.pool.pass_priority
    )
    endpoints = AddressIndex(store)
    # (the gateway's ``health`` section: the same ejection and probes as kvgate serve's; https endpoints
    # probed over TLS verified against the pool's ``caFile``, as they are scraped)
    tracker = HealthTracker(health, clock, store.all)
    if cfg.pool.scheme == "https":
        tracker.default_tls = ssl.create_default_context(cafile=cfg.pool.ca_file)
    return SessionContext(
        director,
        endpoints,
        clock=clock,
        observer=observer,
        policy=policy,
        model_rewrite=rewriter,
        conformance_hooks=cfg.conformance_hooks,
        max_request_body=cfg.max_body_bytes,
        admit=director.admit if director.flow is not None else None,
        outlier=Outlier(tracker, endpoints),
        parsers=ParserRoutes(picker.parsers),
    )
