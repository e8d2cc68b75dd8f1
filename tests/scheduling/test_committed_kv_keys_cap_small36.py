"""small36: the committedKv ledger's memory is bounded by the keys it holds (``MAX_KEYS``), not only by the
requests it tracks (4,096 requests of 2,048 keys held ~1.2 GiB per worker: ``scripts/mem_ledger_rev_e35.py``).
Past the cap the oldest requests are forgotten by ``MAX_TRACKED``'s rule, the long decodes kept; what stays
is counted as a ledger that never saw the forgotten ones counts it. Fails before: no ``MAX_KEYS``."""

from __future__ import annotations

import random
from typing import Any

from kvgate.scheduling.plugins import kv_commit
from kvgate.scheduling.plugins.kv_commit import KVCommitLedger


def test_the_tracked_keys_are_capped_and_what_stays_counts_as_alone(monkeypatch: Any) -> None:
    monkeypatch.setattr(kv_commit, "MAX_KEYS", 1000)
    rng = random.Random(7)
    shared = [rng.getrandbits(63) for _ in range(20)]  # (a prefix several prompts hold: counted once)
    led = KVCommitLedger()
    picks = {}
    led.picked("long", "a", [*shared, 1, 2, 3], 16.0, 5.0, 100_000.0)  # the oldest; it sets the peak
    picks["long"] = ("a", [*shared, 1, 2, 3], 16.0, 5.0, 100_000.0)
    for i in range(100):
        keys = shared[: rng.randint(0, 20)] + [rng.getrandbits(63) for _ in range(30)]
        addr = "ab"[i % 2]
        led.picked(f"r{i}", addr, keys, 16.0, 3.0, 10.0 + i)
        picks[f"r{i}"] = (addr, keys, 16.0, 3.0, 10.0 + i)
    kept = list(led._reqs)
    assert sum(len(picks[r][1]) for r in kept) <= 1000 < sum(len(k) for _, k, *_ in picks.values())
    assert "long" in kept and len(kept) < 101
    alone = KVCommitLedger()
    for r in kept:
        alone.picked(r, *picks[r])
    for addr in "ab":
        assert led.bound(addr) == alone.bound(addr)
        assert led.peak(addr, 0.0) == alone.peak(addr, 0.0)
    for r in kept:
        led.finished(r, 1.0)
    assert len(led) == 0 and led.bound("a") == led.bound("b") == 0.0
