"""rev-d34 F4: pendingHolders' 524,288-entry bound (ea623b17) forgets pending picks long before the
documented 8,192: at the 256-block window with prompts that share no head (RAG: each its own document),
about 2,048 picks in flight fill it, and each pick forgotten is recorded nowhere when its first token
comes (the engine ran that prefill). Before ea623b17 the 8,192-pick bound alone applied. Since the fix the
oldest are parked (out of the map, no longer pending holders) and still recorded at their first token."""

from __future__ import annotations

import random

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import CycleState, PluginHandle
from kvgate.scheduling.plugins import prefix_cache
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.types import InferenceRequest


def test_the_oldest_of_2200_long_pending_picks_is_still_recorded_at_its_first_token() -> None:
    store = EndpointStore(Endpoint(f"10.0.0.{i}:8000") for i in range(32))
    s = PrefixCacheScorer("p", PluginHandle(store, lambda: 0.0, 2.0, random.Random(0)), pending_holders=True)
    eps = store.all()
    rng = random.Random(7)
    first: CycleState | None = None
    n = 2200  # (well under MAX_CLAIMS)
    assert n < prefix_cache.MAX_CLAIMS
    for i in range(n):
        doc = "".join(f"{rng.getrandbits(40):x} " for _ in range(1800))  # its own document, > 256 blocks
        c = CycleState(InferenceRequest(f"r{i}", "m", prompt_text=doc), 0.0)
        s.prepare(c, eps)
        m = prefix_match(c)
        assert m is not None and len(m.hashes) == 256  # (the default window, full)
        s.on_picked(c, eps[i % 32])
        first = first or c
    assert first is not None
    assert s._pend.keys <= prefix_cache.MAX_PENDING_KEYS and "r0" not in s._pending  # (out of the map)
    s.on_first_token(first.request, eps[0], 0.0)  # r0's prefill ran at its endpoint
    m = prefix_match(first)
    assert m is not None
    held = s.index.match(m.hashes, [eps[0].address])[0]
    assert held == len(m.hashes), f"r0 recorded holding {held} of {len(m.hashes)} blocks: forgotten"
