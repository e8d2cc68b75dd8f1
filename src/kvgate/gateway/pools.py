"""Pools at run time: their endpoints (an ``EndpointStore``), scraper and ``Director``.

Each configured pool gets its own store and director, so one pool's load never skews another's
picks; the gateway routes a request to the pool that serves its (rewritten) model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvgate.config.director import build_director
from kvgate.config.gateway import PoolConfig
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.types import InferenceRequest, PickResult


class RequestDirector(Protocol):
    """What the gateway needs from ``kvgate.requestcontrol.director.Director``."""

    def pick(self, req: InferenceRequest, explain: bool = False) -> PickResult: ...
    async def admit(self, req: InferenceRequest, explain: bool = False) -> PickResult: ...
    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None: ...
    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None: ...
    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None: ...


@dataclass(slots=True)
class Pool:
    name: str
    cfg: PoolConfig
    store: EndpointStore
    director: RequestDirector
    adapters: frozenset[str] = field(default_factory=frozenset)

    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.store.all()


def make_store(cfg: PoolConfig) -> EndpointStore:
    return EndpointStore(
        make_endpoint(a, pool=cfg.name, engine=cfg.engine, labels=cfg.endpoint_labels.get(a))
        for a in cfg.endpoints
    )


def build_pool(cfg: PoolConfig, clock: Callable[[], float] = time.monotonic) -> Pool:
    """A pool with the real picker: the pool's EndpointPickerConfig, or its named policy."""
    store = make_store(cfg)
    picker_cfg: Any = cfg.picker_config if cfg.picker_config is not None else policy_config(cfg.policy)
    director = build_director(picker_cfg, store, clock=clock)
    return Pool(cfg.name, cfg, store, director, frozenset(cfg.adapters))
