"""``inference_extension_prefix_indexer_size`` is the entries of every prefix index in the process, summed
(GIE's gauge has no labels: ``pkg/epp/metrics``' ``PrefixCacheSize``, ``[]string{}``). Before (qa29) each
insert set the one gauge to its own scorer's index size, so with two pools (two prefix scorers) it showed
whichever inserted last and flipped between them. Read from the default registry: other tests' live
scorers count too, so the figure is taken against a baseline with the collector off (no scorer freed
meanwhile)."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer

from .helpers import cycle, ep, handle

NAME = "inference_extension_prefix_indexer_size"


def _size() -> float:
    value = REGISTRY.get_sample_value(NAME)
    assert value is not None
    return value


def _pick(s: PrefixCacheScorer, text: str, address: str) -> None:
    e = ep(address)
    c = cycle(text)
    s.prepare(c, [e])
    s.on_picked(c, e)


def test_prefix_indexer_size_is_the_sum_over_the_process_scorers() -> None:
    gc.collect()
    gc.disable()  # (a cycle freed mid-test would move the baseline)
    try:
        base = _size()
        store = EndpointStore([ep("a:1")])
        pool_a = PrefixCacheScorer("a", handle(store))
        pool_b = PrefixCacheScorer("b", handle())
        _pick(pool_a, "q" * 64 * 6, "a:1")
        _pick(pool_b, "z" * 64 * 2, "b:1")  # the last insert: before, the gauge showed this index alone
        assert pool_a.index.total > 0 and pool_b.index.total > 0
        assert _size() == base + pool_a.index.total + pool_b.index.total
        store.remove("a:1")  # (a purge: read at the scrape, not at the next insert)
        assert pool_a.index.total == 0 and _size() == base + pool_b.index.total
        del pool_b
        gc.collect()
        assert _size() == base  # a dropped scorer's index leaves the sum
    finally:
        gc.enable()
