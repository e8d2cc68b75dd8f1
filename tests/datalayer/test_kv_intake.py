"""Live KV-event intake: the subscriber watches its socket itself and applies what is queued in the loop
callback that finds it (issue #16: a pyzmq asyncio receive took a future and a task step per batch); what
the index holds is what applying every batch in order gives, replays included."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from datalayer.test_kvevents import FakeVLLMPublisher, _connected, _until, batch, stored_map
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager, KVEventSubscriber


def _state(idx: BlockIndex) -> tuple[object, ...]:
    """Everything the index holds."""
    eps = {
        e: (list(b.blocks.items()), dict(b.refs), list(b.pending.items()), b.block_size, b.capacity)
        for e, b in idx._eps.items()
    }
    return {k: sorted(v) for k, v in idx._owners.items()}, eps


def _reference(pub: FakeVLLMPublisher, upto: int) -> BlockIndex:
    """Every batch the publisher numbered up to ``upto``, applied one at a time, in order."""
    ref = BlockIndex()
    sub = KVEventSubscriber(ref, "a", "tcp://127.0.0.1:1")
    for seq, payload in pub.buffer:
        if seq <= upto:
            sub.handle(seq, payload)
    return ref


async def test_batches_queued_together_are_applied_in_the_callback_that_finds_them():
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        await _connected(pub, sub)
        await _until(lambda: idx.num_blocks("a") == pub.seq)
        for i in range(5):
            await pub.publish(batch(stored_map([100 + i], None, [i] * 4)))
        # The loop blocked on purpose: all five are queued on the socket when it next looks.
        time.sleep(1.0)  # noqa: ASYNC251 (ample for a loaded machine's ZMQ I/O threads)
        loops = 0
        while sub.stats.last_seq != pub.seq - 1 and loops < 20:
            await asyncio.sleep(0)
            loops += 1
        # This task's step, then the reader's callback: all five in it (a pyzmq receive's future resolves
        # into the subscriber's task step, one loop pass later).
        assert loops <= 2, loops
        assert _state(idx) == _state(_reference(pub, pub.seq - 1))
    finally:
        await mgr.close()
        await pub.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_the_index_is_every_received_batch_applied_in_order(seed):
    """Stores, removals, clears and lost batches (healed by replay): whenever the subscriber has taken the
    publisher's last delivered batch, the index equals one fed every batch in order."""
    rng = random.Random(seed)
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        await _connected(pub, sub)
        held: list[int] = []
        sent = pub.seq - 1
        for step in range(60):
            r = rng.random()
            if r < 0.6 or not held:
                h = 1000 + step
                parent = held[-1] if held and rng.random() < 0.7 else None
                ev = stored_map([h], parent, [rng.randrange(50) for _ in range(4)])
                held.append(h)
            elif r < 0.9:
                gone = rng.sample(held, min(len(held), rng.randint(1, 3)))
                held = [h for h in held if h not in gone]
                ev = {"type": "BlockRemoved", "block_hashes": gone, "medium": "GPU"}
            else:
                held = []
                ev = {"type": "AllBlocksCleared"}
            drop = rng.random() < 0.05
            await pub.publish(batch(ev), drop=drop)
            if not drop:
                sent = pub.seq - 1  # (a lost batch comes by replay once a later one arrives)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.choice([0, 0.001, 0.01]))
            if rng.random() < 0.2:
                await _until(lambda last=sent: sub.stats.last_seq == last)
                assert _state(idx) == _state(_reference(pub, sent)), step
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        last = pub.seq - 1
        await _until(lambda: sub.stats.last_seq == last)
        assert _state(idx) == _state(_reference(pub, last))
        assert sub.stats.resyncs == 0
    finally:
        await mgr.close()
        await pub.close()


async def test_a_dropped_subscriber_applies_nothing_more():
    """``drop`` is sync and the task ends later: no batch of the endpoint may be applied in between."""
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        await _connected(pub, sub)
        await _until(lambda: idx.num_blocks("a") == pub.seq)
        mgr.drop("a")
        assert sub._loop is None and sub._sock is None  # the socket is not watched any more
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        await asyncio.sleep(0.2)
        assert idx.endpoints() == [] and idx.holders(1) == frozenset()
    finally:
        await mgr.close()
        await pub.close()
