"""A stale-drop streak that outgrows a dead engine life's burst is not trusted (fix4), and an engine that
keeps no replay buffer needs none (kv15).

vLLM with ``buffer_steps=0`` (``deque(maxlen=0)``) answers every replay request with the end marker alone.
Once the subscriber followed the engine (history applied), one lost batch (a gap) made the gap's replay
"past" (the answer ended before the batch), the batch was dropped as an earlier life's, ``last_seq``
stayed, and so every later live batch was a gap answered the same way: all dropped, for good (before
fix4), then up to ``STALE_STREAK_MAX`` batches or ``STALE_STREAK_S`` on the subscriber's clock (fix4). Now an
engine whose replay answers nothing, its first batches included, is known to keep no buffer: a gap is
resynced at once and a batch numbered backwards is a restart, as without a replay socket. The streak's
bound stays for an answer that holds batches but not this stream's (a replay port of another stream).
Real ZMQ on loopback (the replay server is vLLM-shaped).
"""

from __future__ import annotations

import asyncio
import random

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, loopback_xpub
from datalayer.test_kv_restart import Sleeps, _fail_next_drain
from datalayer.test_kvevents import FakeVLLMPublisher, _connected, _until, batch, stored_map
from kvgate.datalayer import kvsubscriber
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager, KVEventSubscriber

BASE = 7_000


def _batch(seq: int) -> bytes:
    return batch(stored_map([BASE + seq], None, [seq % 50] * 4))


async def _follow(sub: KVEventSubscriber, idx: BlockIndex) -> None:
    for seq in range(5):  # history applied: the subscriber follows the engine
        await sub._live(seq, _batch(seq))
    assert idx.engine_hashes("a") == set(range(BASE, BASE + 5))


async def test_with_no_replay_buffer_a_gap_is_resynced_at_once() -> None:
    """Batch 5 lost; 6 onwards arrive. Before: dropped as stale, the index frozen at 0-4 until the streak's
    bound (1000 batches or 30 s). Now the end marker alone to the gap's request, and again to one from 0
    (asked once): the engine keeps no buffer, the gap resyncs at once; the next gap asks no more."""
    server = VLLMShapedReplay([])  # buffer_steps=0: the end marker alone
    async with caught_up(server) as (sub, idx):
        await _follow(sub, idx)
        for seq in range(6, 10):
            await sub._live(seq, _batch(seq))
        assert sub.stats.stale_dropped == 0, "live batches dropped as an earlier engine life's"
        assert idx.engine_hashes("a") == set(range(BASE + 6, BASE + 10))
        assert sub.stats.resyncs == 1 and sub.replay_buffer is False
        assert server.requests == [0, 5, 0]
        await sub._live(11, _batch(11))  # 10 lost
        assert idx.engine_hashes("a") == {BASE + 11} and sub.stats.resyncs == 2
        assert server.requests == [0, 5, 0, 10] and sub.stats.stale_dropped == 0


async def test_with_no_replay_buffer_an_engine_restart_is_followed_at_once() -> None:
    """The engine restarts (its numbers from 0 again). Before: each of its batches looked like a dead
    life's (at or below ``last_seq``, then a gap answered "past") and was dropped until the streak's
    bound. Now a restart: cleared and followed."""
    server = VLLMShapedReplay([])
    async with caught_up(server) as (sub, idx):
        await _follow(sub, idx)
        for seq in range(3):
            await sub._live(seq, _batch(100 + seq))
        assert sub.stats.stale_dropped == 0, "the new life's batches dropped as an earlier life's"
        assert idx.engine_hashes("a") == set(range(BASE + 100, BASE + 103))
        assert sub.stats.restarts == 1 and sub.replay_buffer is False


async def test_a_replay_that_holds_another_stream_is_overruled_within_the_time_bound() -> None:
    """A replay port whose buffer is another stream's (another DP rank's): it holds batches, so its "past"
    verdicts are believed, wrongly: each live batch after a gap looks like an earlier life's. On the
    subscriber's clock, a streak older than ``STALE_STREAK_S`` is not trusted, however few batches it
    dropped: resynced, applied, and the stream followed again."""
    server = VLLMShapedReplay([])
    now = [0.0]
    async with caught_up(server) as (sub, idx):
        await _follow(sub, idx)
        server.buffer = [(s, _batch(900 + s)) for s in range(3)]  # (its newest: 2)
        sub.clock = lambda: now[0]
        for seq in range(6, 9):  # 5 lost
            await sub._live(seq, _batch(seq))
            now[0] += 1.0
        assert sub.stats.stale_dropped == 3 and sub.replay_buffer is True
        assert idx.engine_hashes("a") == set(range(BASE, BASE + 5))
        now[0] += kvsubscriber.STALE_STREAK_S
        for seq in range(9, 15):
            await sub._live(seq, _batch(seq))
        assert idx.engine_hashes("a") == set(range(BASE + 9, BASE + 15))
        assert sub.stats.stale_overruled == 1 and sub.stats.stale_dropped == 3
        # a batch applied normally ended the streak: the next stale verdict is trusted again
        await sub._live(20, _batch(20))
        assert sub.stats.stale_dropped == 4


async def test_a_subscriber_restart_starts_a_new_stale_streak() -> None:
    """A streak of stale drops began (one at t=0); the socket fails and the manager restarts the
    subscriber, which catches up again. Failed before: the restarted subscriber kept the old streak's
    start, so its first stale verdict after ``STALE_STREAK_S`` was overruled (resync, the dead batch
    applied) although it began no streak of its own."""
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx, sleep=Sleeps(), rng=random.Random(0))
    now = [0.0]
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        await _connected(pub, sub)
        sub.clock = lambda: now[0]
        await sub._live(0, _batch(500))  # another batch 0 than the engine's: an earlier life's
        assert sub.stats.stale_dropped == 1
        _fail_next_drain(sub)
        await pub.publish(_batch(1))
        await _until(lambda: sub.stats.resubscribes == 1)
        await sub.wait_caught_up()
        now[0] = kvsubscriber.STALE_STREAK_S + 1.0
        await sub._live(0, _batch(501))
        assert sub.stats.stale_overruled == 0, "the old socket's streak overruled the new one's verdict"
        assert sub.stats.stale_dropped == 2
        assert not {BASE + 500, BASE + 501} & idx.engine_hashes("a")
    finally:
        await mgr.close()
        await pub.close()


async def test_a_replay_that_holds_another_stream_is_overruled_within_the_count_bound(monkeypatch) -> None:
    """As above with the clock still (the time bound never reached): past ``STALE_STREAK_MAX`` drops in a
    streak the verdicts are not trusted (the bound made small here: each drop is a replay request; fix4's
    test, deleted in kv15, review s15-kv L2)."""
    monkeypatch.setattr(kvsubscriber, "STALE_STREAK_MAX", 20)
    server = VLLMShapedReplay([])
    async with caught_up(server) as (sub, idx):
        await _follow(sub, idx)
        server.buffer = [(s, _batch(900 + s)) for s in range(3)]
        sub.clock = lambda: 0.0
        for seq in range(6, 26):  # 5 lost
            await sub._live(seq, _batch(seq))
        assert sub.stats.stale_dropped == 20 and sub.stats.stale_overruled == 0
        assert idx.engine_hashes("a") == set(range(BASE, BASE + 5))
        for seq in range(26, 30):
            await sub._live(seq, _batch(seq))
        assert sub.stats.stale_overruled == 1 and sub.stats.stale_dropped == 20
        assert idx.engine_hashes("a") == set(range(BASE + 26, BASE + 30))


async def test_a_pulled_backlog_past_the_judged_bound_is_overruled_there(monkeypatch) -> None:
    """The count bound on batches judged in bulk (pulled off the socket, no request each): a replay port
    whose buffer is another stream's, batch 100 lost and more than the bound queued behind it, the clock
    still. kv15 counted them toward ``STALE_STREAK_MAX`` (100,000, so only the 30 s bound ended such a
    streak); fixkv15 made that 5,000 (review s15-kv L2), which a dead life's backlog of more than 5,000
    tripped, the rest of it applied (review s15-fixes-b 5, ``test_kv_dead_backlog.py``). Since kv16 judged
    drops have their own bound, ``STALE_JUDGED_MAX`` (what the socket and the stash hold), made small here:
    the batch past it is applied after a resync and the rest followed."""
    assert kvsubscriber.STALE_JUDGED_MAX == kvsubscriber.SUB_RCVHWM + kvsubscriber.PULL_MAX
    monkeypatch.setattr(kvsubscriber, "STALE_JUDGED_MAX", 1_000)
    n = 1_300
    life = [_batch(seq) for seq in range(101 + n)]
    pub, port = loopback_xpub(100_000)
    server = VLLMShapedReplay(life[:100])
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert await asyncio.to_thread(pub.poll, 5000), "the SUB never subscribed"
            pub.recv()
            assert sub.stats.last_seq == 99
            server.buffer = [(s, _batch(900 + s)) for s in range(3)]  # another stream's
            sub.clock = lambda: 0.0
            for seq in range(101, 101 + n):
                pub.send_multipart([b"", seq.to_bytes(8, "big"), life[seq]])
            for _ in range(3000):
                if sub.stats.last_seq == 100 + n:
                    break
                await asyncio.sleep(0.01)
            assert sub.stats.stale_overruled == 1, sub.stats
            # (the first batch, and each the socket had not yet queued at a pull, was dropped by a request
            # of its own; 1,000 in bulk; the next judged one applied)
            dropped = sub.stats.stale_dropped
            assert 1_001 <= dropped < n, sub.stats
            first = 101 + dropped  # applied after a resync, and what followed it
            assert idx.engine_hashes("a") == set(range(BASE + first, BASE + 101 + n))
    finally:
        pub.close(0)
