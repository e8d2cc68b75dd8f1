"""A dead engine life that queued more than ``STALE_STREAK_MAX`` batches on the SUB socket (review
s15-fixes-b finding 5; closing-s15 leftover).

Its batches, read off the socket before a replay request of the new life, are judged by that answer
(``_judge``: the engine would hold any batch it published before the request) and dropped without a
request each. They counted toward the stale streak's count bound (5,000), so past it the verdicts were
taken for wrong: the endpoint resynced (the new life's state cleared) and the rest of the dead backlog
applied in order as live, the new life's next batch then clearing it as a "restart". Now batches judged
in bulk have their own bound, what the socket and the stash can hold at most (``SUB_RCVHWM`` +
``PULL_MAX``): a dead life's backlog never reaches it, and the streak stays bounded (that count, the
requests' own count, 30 s).
"""

from __future__ import annotations

import asyncio

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life, loopback_xpub
from kvgate.datalayer import kvsubscriber

OLD, NEW = 1_000_000, 2_000_000


async def test_a_dead_life_that_queued_more_than_the_streak_bound_is_dropped_whole() -> None:
    """The new life's 0-199 caught up; then the dead life's 400-6,399 (6,000, more than the streak's
    count bound) come off the socket, then the new life's 200. Failed before: 5,000 dropped, then a
    resync and the dead life's 5,400-6,399 applied, and the new life's 200 cleared them (the index held
    the new life's 200 alone). Now all 6,000 dropped, the new life's state kept and its 200 followed."""
    n = 6_000
    assert n > kvsubscriber.STALE_STREAK_MAX
    old, new = engine_life(OLD, 400 + n), engine_life(NEW, 201)
    pub, port = loopback_xpub(100_000)
    server = VLLMShapedReplay(new[:200])
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert await asyncio.to_thread(pub.poll, 5000), "the SUB never subscribed"
            pub.recv()
            assert sub.stats.last_seq == 199
            sub.clock = lambda: 0.0  # (the time bound out of the way: the count is what is tested)
            for seq in range(400, 400 + n):
                pub.send_multipart([b"", seq.to_bytes(8, "big"), old[seq]])
            server.buffer.append((200, new[200]))
            pub.send_multipart([b"", (200).to_bytes(8, "big"), new[200]])
            for _ in range(3000):
                if sub.stats.last_seq == 200:
                    break
                await asyncio.sleep(0.01)
            held = idx.engine_hashes("a")
            stale = {h for h in held if h < NEW}
            assert not stale, f"the index holds {len(stale)} blocks of the dead engine life"
            assert held == set(range(NEW, NEW + 201)), f"the new life's state lost: {len(held)} held"
            assert sub.stats.stale_dropped == n and sub.stats.stale_overruled == 0, sub.stats
            assert sub.stats.resyncs == 0 and sub.stats.restarts == 0
            assert len(server.requests) < 100, f"{len(server.requests)} replay requests"
    finally:
        pub.close(0)
