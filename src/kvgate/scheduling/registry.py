"""Plugin registry by type string, with automatic discovery of ``kvgate.scheduling.plugins.*``.

Any module dropped into the plugins package registers itself with ``@register("type-name")`` on
import; ``discover()`` imports them all once, so adding a plugin never means editing this file.
Plugin types defined above scheduling (flow control's saturation detectors) register when their own
module is imported; the config loader imports it.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from kvgate.scheduling.framework import Plugin

log = logging.getLogger(__name__)

P = TypeVar("P", bound=type[Plugin])

_REGISTRY: dict[str, type[Plugin]] = {}
_discovered = False


def register(type_name: str) -> Callable[[P], P]:
    def deco(cls: P) -> P:
        other = _REGISTRY.get(type_name)
        if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"plugin type {type_name!r} registered twice ({other} and {cls})")
        cls.type_name = type_name
        _REGISTRY[type_name] = cls
        return cls

    return deco


def discover() -> None:
    """Import every module of ``kvgate.scheduling.plugins`` (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    pkg = importlib.import_module("kvgate.scheduling.plugins")
    names = [m.name for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # one broken plugin module must not take the picker down
            log.exception("failed to import plugin module %s", name)


def get(type_name: str) -> type[Plugin] | None:
    discover()
    return _REGISTRY.get(type_name)


def types() -> list[str]:
    discover()
    return sorted(_REGISTRY)
