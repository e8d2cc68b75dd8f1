"""Session 34's pick-path cuts (issue #16, pick34) decide as the code they replace.

- ``PrefixIndex.match`` keeps its address set-up while the address list and the slots stay the same:
  checked against a plain walk of each endpoint's LRU over random adds, removals (slots freed and given
  again) and address lists that repeat, change and shrink.
- The cost scorer's ``on_picked`` keeps each waiting request's keys as their low 64 bits, packed without a
  list of masked ints where they fit (keys past 64 bits: the masked list, as before).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.scheduling.plugins import prefix_cache
from kvgate.scheduling.plugins.kvgate_cost import _U64, KVGateCostScorer
from kvgate.scheduling.prefix import PrefixIndex
from kvgate.scheduling.types import InferenceRequest

from .helpers import fleet


def _walk(index: PrefixIndex, hashes: Sequence[int], addresses: Sequence[str]) -> list[int]:
    """Leading blocks each address holds, read off its LRU (no bitmasks, no slots)."""
    out: list[int] = []
    for a in addresses:
        lru = index._lru.get(a)
        n = 0
        if lru is None:
            out.append(n)
            continue
        for h in hashes:
            if h not in lru:
                break
            n += 1
        out.append(n)
    return out


def test_match_keeps_its_setup_only_while_addresses_and_slots_stay() -> None:
    rng = random.Random(34)
    pool = [f"10.0.0.{i}:8000" for i in range(8)]
    chains = [[rng.getrandbits(63) for _ in range(12)] for _ in range(6)]
    index = PrefixIndex(default_capacity=40, max_total_blocks=10_000)
    lists = [list(pool), pool[:5], pool[3:], [pool[6], pool[1], pool[4]]]
    hits = 0
    for step in range(3_000):
        op = rng.random()
        if op < 0.35:
            chain = rng.choice(chains)
            index.add(rng.choice(pool), chain[: rng.randint(1, len(chain))])
        elif op < 0.45:
            index.remove_endpoint(rng.choice(pool))  # (frees a slot the next new endpoint takes)
        else:
            # The same list object again (what a refresh keeps), an equal copy, or another list.
            addrs = rng.choice(lists) if rng.random() < 0.7 else list(rng.choice(lists))
            hits += addrs == index._match_addrs
            chain = rng.choice(chains)
            got = index.match(chain, addrs)
            assert got == _walk(index, chain, addrs), step
    assert hits > 100  # (the kept set-up was used, not only rebuilt)


@pytest.mark.parametrize("wide", [False, True])
def test_waiting_keys_packed_as_their_low_64_bits(wide: bool, monkeypatch: Any) -> None:
    """``on_picked`` packs the prompt's keys into the ``'Q'`` array directly, the masked list only for a
    key past 64 bits: either way each waiting request keeps its keys' low 64 bits, what the burst scan
    compares with the prompt's key (also masked)."""
    seen: list[list[int]] = []
    real = prefix_cache.block_hashes

    def hashes(*a: Any, **k: Any) -> list[int]:
        got = [h + (1 << 64) if wide else h for h in real(*a, **k)]
        seen.append(got)
        return got

    monkeypatch.setattr(prefix_cache, "block_hashes", hashes)
    d = build_director("kvgate", fleet(4), clock=lambda: 0.0, seed=0)
    scorer = next(p for p in d.handle.plugins.values() if isinstance(p, KVGateCostScorer))
    head = "tenant system prompt " * 30
    for i in range(40):
        d.pick(InferenceRequest(f"r{i}", "m", prompt_text=head[: 200 + 10 * i] + f" q{i}", max_tokens=100))
    kept = {rid: h for w in scorer._waiting_at.values() for rid, h in w.items()}
    assert len(kept) == 40 and len(seen) == 40
    for i, keys in enumerate(seen):
        h = kept[f"r{i}"]
        assert isinstance(h, array) and h.typecode == "Q"
        assert list(h) == [k & _U64 for k in keys]
    assert wide == any(k >> 64 for k in seen[0])  # (the wide keys were in use)
