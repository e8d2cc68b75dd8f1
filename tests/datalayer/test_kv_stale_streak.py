"""fix4: a stale-drop streak that outgrows a dead engine life's burst is not trusted.

vLLM with ``buffer_steps=0`` answers every replay request with the end marker alone. Once the subscriber
follows the engine (history applied), one lost batch (a gap) made the gap's replay "past" (the answer
ended before the batch), the batch was dropped as an earlier life's, ``last_seq`` stayed, and so every
later live batch was a gap answered the same way: all dropped, for good, the engine's index frozen. A dead
life's queued batches are a finite burst, so a streak longer than ``STALE_STREAK_MAX`` batches (or
``STALE_STREAK_S`` on the subscriber's clock) resyncs the endpoint and applies the batch.
Real ZMQ on loopback (the replay server is vLLM-shaped).
"""

from __future__ import annotations

import asyncio

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up
from datalayer.test_kvevents import batch, stored_map
from kvgate.datalayer import kvsubscriber
from kvgate.datalayer.kvevents import BlockIndex, KVEventSubscriber

BASE = 7_000


def _batch(seq: int) -> bytes:
    return batch(stored_map([BASE + seq], None, [seq % 50] * 4))


async def _follow(sub: KVEventSubscriber, idx: BlockIndex) -> None:
    for seq in range(5):  # history applied: the subscriber follows the engine
        await sub._live(seq, _batch(seq))
    assert idx.engine_hashes("a") == set(range(BASE, BASE + 5))


async def test_after_a_gap_live_batches_reach_the_index_within_the_count_bound() -> None:
    """Batch 5 lost; 6 onwards arrive. Before: every one dropped as stale, the index frozen at 0-4."""
    bound = kvsubscriber.STALE_STREAK_MAX
    server = VLLMShapedReplay([])  # buffer_steps=0: the end marker alone
    async with caught_up(server) as (sub, idx):
        await _follow(sub, idx)
        last = 6 + bound + 20
        async with asyncio.timeout(120):
            for seq in range(6, last):
                await sub._live(seq, _batch(seq))
        # the batch past the bound was applied after a resync (what it cleared is unknown), and all after it
        assert idx.engine_hashes("a") == set(range(BASE + 6 + bound, BASE + last))
        assert sub.stats.stale_dropped == bound
        assert sub.stats.stale_overruled == 1 and sub.stats.resyncs == 1
        assert sub.stats.last_seq == last - 1


async def test_after_an_engine_restart_live_batches_reach_the_index_within_the_time_bound() -> None:
    """The engine restarts (its numbers from 0 again) and its replay holds nothing: each of its batches
    looked like a dead life's (at or below ``last_seq``, then a gap answered "past"). On the subscriber's
    clock, a streak older than ``STALE_STREAK_S`` is not trusted, however few batches it dropped."""
    server = VLLMShapedReplay([])
    now = [0.0]
    async with caught_up(server) as (sub, idx):
        await _follow(sub, idx)
        sub.clock = lambda: now[0]
        for seq in range(3):  # the new life's first batches: dropped (could be a dead life's burst)
            await sub._live(seq, _batch(100 + seq))
            now[0] += 1.0
        assert sub.stats.stale_dropped == 3
        now[0] += kvsubscriber.STALE_STREAK_S
        for seq in range(3, 10):
            await sub._live(seq, _batch(100 + seq))
        assert idx.engine_hashes("a") == set(range(BASE + 103, BASE + 110))
        assert sub.stats.stale_overruled == 1 and sub.stats.stale_dropped == 3
        # a batch applied normally ended the streak: the next stale verdict is trusted again
        await sub._live(2, _batch(999))
        assert sub.stats.stale_dropped == 4
