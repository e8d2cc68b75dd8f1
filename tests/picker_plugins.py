"""What the ``approx-prefix-cache-producer`` tests share (tests/config/test_*producer*, the gateway's reload
one): a Director built from a picker config on a store, and the ``prefix-cache-affinity-filter`` in it."""

from __future__ import annotations

from collections.abc import Callable

from kvgate.config.director import build_director
from kvgate.config.picker import load_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheAffinityFilter


def director_for(
    doc: str, store: EndpointStore | None = None, clock: Callable[[], float] = lambda: 0.0
) -> Director:
    """``doc``'s Director (seed 0) on ``store`` (else one endpoint, 10.0.0.1:8000)."""
    store = EndpointStore([make_endpoint("10.0.0.1:8000")]) if store is None else store
    return build_director(load_config(doc), store, clock=clock, seed=0)


def affinity_filters(director: Director) -> list[PrefixCacheAffinityFilter]:
    return [p for p in director.handle.plugins.values() if isinstance(p, PrefixCacheAffinityFilter)]


def affinity_filter(director: Director) -> PrefixCacheAffinityFilter:
    """The one ``prefix-cache-affinity-filter`` of ``director``'s config."""
    (flt,) = affinity_filters(director)
    return flt
