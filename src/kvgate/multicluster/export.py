"""The per-cluster side: a front door's pool aggregate source (``GET /v1/pool/aggregate``).

The hot prefix blocks come from the policy's approximate prefix scorer (any plugin with an ``index``
holding ``hot(limit)`` and a ``block_size``), so a global gateway hashes prompts the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from kvgate.datalayer.aggregate import AggregateSource
from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.prefix import CHARS_PER_TOKEN, PrefixIndex

HOT_BLOCKS = 16384  # ~16 KiB of Bloom filter: the recent working set of shared prefixes, not everything


def _prefix_plugin(director: Any) -> Any | None:
    handle = getattr(director, "handle", None)
    for plugin in getattr(handle, "plugins", {}).values():
        if isinstance(getattr(plugin, "index", None), PrefixIndex) and hasattr(plugin, "block_size"):
            return plugin
    return None


def aggregate_source(
    name: str,
    endpoints: Callable[[], Iterable[Endpoint]],
    director: Any = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    tls: bool = False,
    mtls: bool = False,
    hot_blocks: int = HOT_BLOCKS,
    models: Callable[[], Iterable[str]] = tuple,
) -> AggregateSource:
    plugin = _prefix_plugin(director)
    if plugin is None:
        return AggregateSource(name, endpoints, clock=clock, wall=wall, tls=tls, mtls=mtls, models=models)
    chunk = int(getattr(plugin, "_chunk_tokens", plugin.block_size)) * CHARS_PER_TOKEN
    return AggregateSource(
        name,
        endpoints,
        clock=clock,
        wall=wall,
        hot_blocks=lambda: plugin.index.hot(hot_blocks),
        prefix_chunk_chars=chunk,
        tls=tls,
        mtls=mtls,
        models=models,
    )
