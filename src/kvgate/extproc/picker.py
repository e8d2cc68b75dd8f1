"""Wiring the EPP to kvgate's scheduler: the Director, the model rewriter, objectives and usage."""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kvgate.config.gateway import RewriteRule
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.config import EppConfig
from kvgate.extproc.openai import Usage
from kvgate.extproc.session import Observer, SessionContext
from kvgate.scheduling.director import Director, build_director
from kvgate.scheduling.director import Usage as DirectorUsage


def build_picker(
    config: Mapping[str, Any] | str | None,
    store: EndpointStore,
    *,
    policy: str = "kvgate",
    clock: Callable[[], float] = time.monotonic,
) -> Director:
    """``config`` is an EndpointPickerConfig (decoded YAML); without one, the named ``policy``."""
    return build_director(config if config is not None else policy, store, clock)


def to_director_usage(u: Usage) -> DirectorUsage:
    return DirectorUsage(u.prompt_tokens, u.completion_tokens, u.cached_tokens)


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


class WeightedRewriter:
    """InferenceModelRewrite rules: the first rule matching the model (or matching all) picks a target by
    weight. (The gateway has the same logic in ``kvgate.gateway.rewrite``; extproc may not import the
    gateway package, see docs/architecture.md.)"""

    def __init__(self, rules: Sequence[RewriteRule], seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._rules: list[tuple[frozenset[str], list[str], list[int]]] = []
        for rule in rules:
            names = [t.model for t in rule.targets]
            self._rules.append(
                (frozenset(rule.matches), names, list(itertools.accumulate(t.weight for t in rule.targets)))
            )

    def __call__(self, model: str) -> str | None:
        """The model to send upstream, or None to leave the request as it is."""
        for matches, names, cum in self._rules:
            if not matches or model in matches:
                target = (
                    names[0]
                    if len(names) == 1
                    else names[bisect.bisect_right(cum, self._rng.randrange(cum[-1]))]
                )
                return target if target != model else None
        return None


def build_context(
    cfg: EppConfig,
    store: EndpointStore,
    *,
    clock: Callable[[], float] = time.monotonic,
    observer: Observer | None = None,
) -> SessionContext:
    director = build_picker(cfg.picker_config, store, policy=cfg.pool.policy, clock=clock)
    rewriter = WeightedRewriter(cfg.gateway.rewrites, seed=cfg.gateway.rewrite_seed)
    objectives = cfg.objectives

    return SessionContext(
        director,
        AddressIndex(store),
        clock=clock,
        observer=observer,
        usage_factory=to_director_usage,
        objective_priority=lambda name: objectives.get(name, 0),
        model_rewrite=rewriter,
        conformance_hooks=cfg.conformance_hooks,
        max_request_body=cfg.max_body_bytes,
    )
