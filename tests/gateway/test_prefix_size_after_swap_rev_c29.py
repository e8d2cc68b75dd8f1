"""rev-c29 F3: ``inference_extension_prefix_indexer_size`` (7ddb7936) sums every PrefixIndex still alive
(a WeakSet). After a reload swaps a pool's picker to one with a new prefix index (blockSize changed), the
replaced picker's index is still counted until the cyclic GC happens to collect the old Director, so the
gauge shows old + new entries. Fails on main 22c8a4f2 if the old Director sits in a reference cycle (and on
cf92d3b6; cfg30 took it from /work/team/reviews/s29-rev-c29-tests and added the kept-index case)."""

from __future__ import annotations

import gc

import pytest
import yaml
from prometheus_client import REGISTRY

from gateway.conftest import make_config, make_pools
from kvgate.gateway.reload import ConfigReloader
from kvgate.gateway.server import GatewayServer

pytestmark = pytest.mark.asyncio
NAME = "inference_extension_prefix_indexer_size"


def _picker(block: int, queue: bool = False) -> dict:
    extra = [{"type": "queue-scorer"}] if queue else []
    refs = [{"pluginRef": "queue-scorer"}] if queue else []
    return {
        "plugins": [
            {"type": "prefix-cache-scorer", "parameters": {"blockSize": block}},
            *extra,
        ],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "prefix-cache-scorer"}, *refs]}],
    }


def _pools(block: int, queue: bool = False) -> list[dict]:
    return [
        {
            "name": "p",
            "endpoints": ["127.0.0.1:1001"],
            "models": ["m"],
            "endpointPickerConfig": _picker(block, queue),
        }
    ]


async def test_a_replaced_pickers_index_leaves_the_sum_at_the_swap(tmp_path):
    gc.collect()
    gc.disable()  # (as the obs29 test: the cyclic GC is what would hide it)
    try:
        cfg = make_config([], extra={"pools": _pools(64)})
        gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
        await gw.start()
        try:
            base = REGISTRY.get_sample_value(NAME)
            scorer = gw.pools[0].director.handle.plugins["prefix-cache-scorer"]
            from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer  # noqa: F401

            idx = scorer.index
            idx.total  # noqa: B018
            # fill the old index through the public scorer path
            from scheduling.helpers import cycle, ep

            e = ep("127.0.0.1:1001")
            c = cycle("q" * 64 * 6)
            scorer.prepare(c, [e])
            scorer.on_picked(c, e)
            filled = idx.total
            assert filled > 0
            del scorer, idx, c, e
            f = tmp_path / "gw.yaml"
            f.write_text(yaml.safe_dump({"pools": _pools(32)}))
            rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
            assert await rl.areload()
            new = gw.pools[0].director.handle.plugins["prefix-cache-scorer"].index
            got = REGISTRY.get_sample_value(NAME)
            assert got == base + new.total, f"gauge {got}: the replaced picker's {filled} still counted"
            # A swap that keeps the prefix scorer (another scorer added) keeps its index, and its count
            # (cfg30: the fix forgets only the indexes the new picker did not take over).
            scorer = gw.pools[0].director.handle.plugins["prefix-cache-scorer"]
            e, c = ep("127.0.0.1:1001"), cycle("r" * 64 * 6)
            scorer.prepare(c, [e])
            scorer.on_picked(c, e)
            assert scorer.index.total > 0
            f.write_text(yaml.safe_dump({"pools": _pools(32, queue=True)}))
            assert await rl.areload()
            kept = gw.pools[0].director.handle.plugins["prefix-cache-scorer"]
            assert kept is not scorer and kept.index is scorer.index
            assert REGISTRY.get_sample_value(NAME) == base + scorer.index.total
        finally:
            await gw.stop(drain_timeout=0.2)
    finally:
        gc.enable()
