"""Pools at run time: their endpoints (an ``EndpointStore``), scraper and ``Director``.

Each configured pool gets its own store and director, so one pool's load never skews another's
picks; the gateway routes a request to the pool that serves its (rewritten) model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvgate.config.director import build_director
from kvgate.config.gateway import GatewayConfigError, PoolConfig, ignored_policy
from kvgate.config.picker import FALLBACK_PARSERS, EndpointPickerConfig, parse_config
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import ENGINE_LABELS, LLMD_ENGINE_LABEL, EndpointStore, make_endpoint
from kvgate.scheduling.plugins.wiring import engine_label, engine_label_keys
from kvgate.scheduling.types import InferenceRequest, PickResult

log = logging.getLogger(__name__)


class RequestDirector(Protocol):
    """What the gateway needs from ``kvgate.requestcontrol.director.Director``."""

    def pick(self, req: InferenceRequest, explain: bool = False) -> PickResult: ...
    async def admit(
        self, req: InferenceRequest, explain: bool = False, wait_max: float | None = None
    ) -> PickResult: ...
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
    # The picker config ``director`` was built from, parsed (None: not kept): a reload compares the new
    # picker with it, never parsing the running one again (its tokenizer file may be gone; rev-d31 F1).
    spec: EndpointPickerConfig | None = None

    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.store.all()


def make_store(cfg: PoolConfig) -> EndpointStore:
    """The pool's store, its listed endpoints in it. The EndpointPickerConfig's ``engineLabelKey`` names the
    one pod label its discovered pods' engine is read from (as ``kvgate epp`` reads it; before any pod is
    added); listed endpoints carry no pod labels: their engine is ``pools[].engine``."""
    store = EndpointStore()
    if label := engine_label_of(cfg):
        store.engine_labels = (label,)
    store.sync(
        make_endpoint(a, pool=cfg.name, engine=cfg.engine, labels=cfg.endpoint_labels.get(a))
        for a in cfg.endpoints
    )
    return store


def engine_label_of(cfg: PoolConfig) -> str | None:
    """The pod label the pool's EndpointPickerConfig names for a pod's engine (``engineLabelKey``; the
    first: two different ones are refused by ``picker_spec``), or None: kvgate's default labels."""
    named = engine_label_keys(cfg.picker_config)
    return named[0][1] if named else None


def picker_of(cfg: PoolConfig) -> dict[str, Any] | str:
    """What a pool's picker is built from: its EndpointPickerConfig, else its named policy."""
    return cfg.picker_config if cfg.picker_config is not None else cfg.policy


def picker_spec(cfg: PoolConfig, *, announce: bool = False) -> EndpointPickerConfig:
    """The pool's picker config, parsed (plugin names, types, parameters). ``announce``: log what it warns
    of; only a load of the pool's picker does (``build_director_for``), not a comparison or a layout, so
    each line is said once per load (review s27-rev-fixes27a F1)."""
    if cfg.picker_config is None:
        return policy_config(cfg.policy)
    spec = parse_config(cfg.picker_config, announce=announce)
    if announce and (line := ignored_policy(cfg)) is not None:
        log.warning("%s", line)
    named = engine_label(cfg.picker_config)  # (ValueError: two labels; a config error at load and reload)
    if announce and named is not None:
        if cfg.inference_pool is None:  # (the reference's default named asks nothing of listed endpoints)
            if named[1] != LLMD_ENGINE_LABEL:
                log.warning("pool %s: endpointPickerConfig.%s %r names no engine here: the pool's endpoints "
                            "are listed, with no pod labels to read; their engine is pools[].engine (%r)",
                            cfg.name, *named, cfg.engine)  # fmt: skip
        else:
            log.info("pool %s: a discovered pod's engine is its %r label (endpointPickerConfig.%s), not %s "
                     "nor %s", cfg.name, named[1], named[0], *ENGINE_LABELS)  # fmt: skip
    if announce and (fallback := next((t for t in spec.parsers if t in FALLBACK_PARSERS), None)):
        # (the doors' rule: what kvgate cannot honour is one WARNING line, rev-b34 F8)
        log.warning("pool %s: endpointPickerConfig requestHandler.parsers %s not applied: kvgate serve "
                    "parses the paths it routes as OpenAI bodies and answers 404 for the others "
                    "(/v1/audio/* included); kvgate epp applies it (docs/epp.md, 'Request parsers')",
                    cfg.name, fallback)  # fmt: skip
    return spec


def picker_key(index: int, cfg: PoolConfig) -> str:
    """The config key a pool's picker errors are reported against."""
    return f"pools[{index}].{'endpointPickerConfig' if cfg.picker_config is not None else 'policy'}"


def parsed_picker(cfg: PoolConfig, index: int = 0, announce: bool = True) -> EndpointPickerConfig:
    """``picker_spec``, an error a ``GatewayConfigError`` naming ``pools[index]``'s key: what a reload
    builds from and compares with (``build_director_for``'s ``spec``), parsed once."""
    try:
        return picker_spec(cfg, announce=announce)
    except (ValueError, KeyError, TypeError) as e:
        raise _picker_error(index, cfg, e) from e


def _picker_error(index: int, cfg: PoolConfig, e: Exception) -> GatewayConfigError:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return GatewayConfigError(picker_key(index, cfg), str(msg))


def build_director_for(
    cfg: PoolConfig,
    store: EndpointStore,
    clock: Callable[[], float] = time.monotonic,
    index: int = 0,
    announce: bool = True,
    spec: EndpointPickerConfig | None = None,
) -> RequestDirector:
    """The pool's picker on ``store``; an error is a ``GatewayConfigError`` naming ``pools[index]``'s key
    (then the plugin's: ``pools[0].endpointPickerConfig: plugins[1].parameters: ...``). ``announce``: log
    the config's warnings (False in a ``--workers`` worker: its supervisor said them). ``spec``: the pool's
    picker parsed already (``parsed_picker``)."""
    try:
        picker: Any = spec if spec is not None else picker_spec(cfg, announce=announce)
        return build_director(picker, store, clock=clock, pool=cfg.name)
    except (ValueError, KeyError, TypeError) as e:
        raise _picker_error(index, cfg, e) from e


def build_pool(
    cfg: PoolConfig, clock: Callable[[], float] = time.monotonic, index: int = 0, announce: bool = True
) -> Pool:
    """A pool with the real picker: the pool's EndpointPickerConfig, or its named policy."""
    spec = parsed_picker(cfg, index, announce)  # (first: it refuses two engine labels the store would read)
    store = make_store(cfg)
    director = build_director_for(cfg, store, clock, index, announce, spec)
    return Pool(cfg.name, cfg, store, director, frozenset(cfg.adapters), spec)
