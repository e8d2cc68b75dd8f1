"""qa36a F3: with ``autoTune: false`` the prefix index holds ``lruCapacityPerServer`` blocks per server,
not the scraped ``num_gpu_blocks`` (the reference's ``makeServer``: the server's count only under
``autoTune``). With ``autoTune`` on, the scraped count still bounds it."""

from __future__ import annotations

import random

import pytest

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.scheduling.framework import CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.types import InferenceRequest

TEXT = "p" * 64 * 5  # 5 blocks of 16 tokens (4 characters a token)


def _matched_again(auto_tune: bool, scraped: int | None) -> int:
    met = EndpointMetrics(updated_at=0.0, block_size=16, num_gpu_blocks=scraped)
    a = Endpoint(address="a:1", metrics=met)
    params = Params({"autoTune": auto_tune, "blockSizeTokens": 16, "lruCapacityPerServer": 2}, "p")
    s = PrefixCacheScorer.create("p", params, PluginHandle(None, lambda: 0.0, 2.0, random.Random(0)))
    first = CycleState(InferenceRequest("r1", "m", prompt_text=TEXT), 0.0)
    s.prepare(first, [a])
    s.on_picked(first, a)
    again = CycleState(InferenceRequest("r2", "m", prompt_text=TEXT), 0.0)
    s.prepare(again, [a])
    m = prefix_match(again)
    assert m is not None and len(m.hashes) == 5
    return m.matched.get("a:1", 0)


@pytest.mark.parametrize("scraped", [128, None])
def test_auto_tune_off_bounds_the_index_by_lru_capacity_per_server(scraped: int | None) -> None:
    # Capacity 2, blocks added head first: the head ages out, so the chain matches nothing.
    assert _matched_again(False, scraped) == 0


def test_auto_tune_on_uses_the_scraped_block_count() -> None:
    # (the control: the server's 128 blocks hold all 5; lruCapacityPerServer is the fallback only)
    assert _matched_again(True, 128) == 5
    assert _matched_again(True, None) == 0
