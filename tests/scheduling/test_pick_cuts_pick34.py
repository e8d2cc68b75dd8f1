"""Session 34's pick-path cuts (issue #16, pick34) decide as the code they replace.

- ``PrefixIndex.match`` keeps its address set-up while the address list and the slots stay the same:
  checked against a plain walk of each endpoint's LRU over random adds, removals (slots freed and given
  again) and address lists that repeat, change and shrink.
- The cost scorer's count-only burst scan (``_waiting_on_prefix`` without ``tail_shared``: the keys at
  the matched depth counted in C) gives the request-id scan's count, with waiting prompts shorter than the
  depth (its fallback) and keys outside 0..2**64-1 (``on_picked``'s masked fallback).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState
from kvgate.scheduling.plugins import prefix_cache
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
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


class _Both:
    """Wraps a cost scorer's ``_waiting_on_prefix``: each call also runs the request-id scan (the
    ``burstTail`` path, whose ``same`` list is the scan as before) and records both counts."""

    def __init__(self, scorer: KVGateCostScorer) -> None:
        self.scorer = scorer
        self.inner = scorer._waiting_on_prefix
        self.pairs: list[tuple[int, int]] = []

    def __call__(
        self,
        cycle: CycleState,
        endpoints: Sequence[Endpoint],
        matched: dict[str, int],
        tail_shared: list[int] | None = None,
    ) -> int:
        counted = self.inner(cycle, endpoints, matched, None)
        s = self.scorer
        s.burst_tail = True  # (its scan lists the request ids; no tail data here: tail_shared unused)
        try:
            scanned = self.inner(cycle, endpoints, matched, [])
        finally:
            s.burst_tail = False
        self.pairs.append((counted, scanned))
        return counted


@pytest.mark.parametrize("wide", [False, True])
def test_count_only_burst_scan_counts_as_the_scan(wide: bool, monkeypatch: Any) -> None:
    if wide:
        # Keys past 2**64 - 1: ``on_picked`` keeps their low 64 bits, as the scan compares them.
        real = prefix_cache.block_hashes
        monkeypatch.setattr(
            prefix_cache, "block_hashes", lambda *a, **k: [h + (1 << 64) for h in real(*a, **k)]
        )
    d = build_director("kvgate", fleet(4), clock=lambda: 0.0, seed=0)
    scorer = next(p for p in d.handle.plugins.values() if isinstance(p, KVGateCostScorer))
    both = _Both(scorer)
    scorer._waiting_on_prefix = both  # type: ignore[method-assign]
    rng = random.Random(7)
    heads = [f"tenant {g} system prompt " * 30 for g in range(3)]
    for i in range(400):
        # Prompts of one head at different lengths: waiting requests shorter than a later match's depth.
        head = rng.choice(heads)
        text = head[: rng.randint(200, len(head))] + f" q{i}"
        r = InferenceRequest(f"r{i}", "m", prompt_text=text, max_tokens=100)
        d.pick(r)  # (never answered: the holders' waiting lists grow past the 128 scanned)
    pairs = both.pairs
    assert pairs and all(c == s for c, s in pairs), [p for p in pairs if p[0] != p[1]][:5]
    assert max(c for c, _ in pairs) >= 20  # bursts were counted, not only zeros
    kept = [h for w in scorer._waiting_at.values() for h in w.values()]
    assert len({len(h) for h in kept}) > 5  # waiting prompts of many lengths (the short ones' fallback)
    if wide:
        assert prefix_cache.block_hashes("m", "x" * 256, 64)[0] >> 64 == 1  # (the wide keys were in use)
