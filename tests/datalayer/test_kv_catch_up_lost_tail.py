"""A join's catch-up whose answer lost its tail while its end marker came (kv16; closing-s15 leftover).

vLLM's replay ROUTER drops what its pipe to the fetch does not hold while it sends the whole answer in one
loop, then sends the end marker, which can get through once the pipe drained (review s14-fixes L2). A
gap's replay checks such an end (asked again from the answer's last batch, kv15/fixkv15); the join's
catch-up (an open-ended fetch: the engine's whole state) did not: it applied the answer as the engine's
whole buffer. The index then missed the tail until the first live batch came as a gap, and a reset
(``AllBlocksCleared``) in the lost tail was never seen: the catch-up applied blocks that reset dropped.
Now the catch-up's end is checked the same way: the answer from its last batch may go further only by
the live batches the subscriber received between the two requests (what the engine can have published
meanwhile); further, it was a lost tail, and the fetch goes on from there.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life, loopback_xpub
from datalayer.test_kvevents import batch

NEW = 2_000_000


async def test_a_catch_up_whose_tail_was_lost_but_whose_end_marker_came_fetches_the_tail() -> None:
    """The catch-up's answer loses 300-399 and keeps its end marker. Failed before: the catch-up applied
    0-299 and ended (last_seq 299). Now the check from 299 gets 299-399 (100 more batches than the engine
    can have published meanwhile: none came live, so the first answer lost its tail), and the check from
    399 confirms the end: all 400 applied at the join."""
    life = engine_life(NEW, 400)
    server = VLLMShapedReplay(life, lose=lambda n, seq: n == 1 and seq is not None and seq >= 300)
    async with caught_up(server) as (sub, idx):
        assert sub.stats.last_seq == 399, f"requests {server.requests}"
        assert idx.engine_hashes("a") == set(range(NEW, NEW + 400))
        # (from 0; the check from 299 found a lost tail; the one from 399 confirmed: [0, 299, 399] unless a
        # loaded machine made a silence mid-answer, FETCH_SILENCE_S, which asks again from there)
        assert server.requests[0] == 0 and server.requests[-1] == 399, server.requests
        assert sub.stats.fetch_rerequests >= 1


async def test_a_reset_in_a_catch_up_s_lost_tail_is_not_missed() -> None:
    """The engine reset at batch 350 (``AllBlocksCleared``), and the catch-up's answer lost 300-399.
    Failed before: the catch-up applied 0-299, blocks the engine no longer holds (over-report until the
    first live batch healed the gap and met the reset). Now only what followed the reset is applied."""
    life = engine_life(NEW, 400)
    life[350] = batch({"type": "AllBlocksCleared"})
    server = VLLMShapedReplay(life, lose=lambda n, seq: n == 1 and seq is not None and seq >= 300)
    async with caught_up(server) as (sub, idx):
        assert idx.engine_hashes("a") == set(range(NEW + 351, NEW + 400)), f"requests {server.requests}"
        assert sub.stats.last_seq == 399 and sub.stats.caught_up == 350


async def test_a_catch_up_on_a_publishing_engine_settles_in_one_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(Passes before too: the catch-up asked once.) An engine that publishes one batch live after each
    replay answer (vLLM serves one request per pass of its publisher loop, then publishes): the check's
    answer goes one batch further, and the subscriber received that batch on its socket meanwhile, so the
    end is confirmed at the first check (not a lost tail: nothing asked again, nothing logged)."""
    life = engine_life(NEW, 440)
    pub, port = loopback_xpub()
    server: VLLMShapedReplay

    def publish_after(n: int, seq: int | None) -> bool:
        # (on the server's thread, the PUB's only user)
        if n == 1 and seq == 0:
            assert pub.poll(5000), "the SUB never subscribed"
            pub.recv()
        if seq is None and len(server.buffer) < len(life):
            k = len(server.buffer)
            pub.send_multipart([b"", k.to_bytes(8, "big"), life[k]])  # published, then buffered
            server.buffer.append((k, life[k]))
        return False

    server = VLLMShapedReplay(life[:400], lose=publish_after)
    caplog.set_level(logging.WARNING, logger="kvgate.datalayer.kvsubscriber")
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            # (before: [0]; now [0, 399], one check; more only if a loaded machine made a silence
            # mid-answer, FETCH_SILENCE_S: each such request is a re-request, logged)
            assert sub.stats.replayed >= 400, f"the catch-up was not used: {server.requests}"
            rerequests = sub.stats.fetch_rerequests
            assert len(server.requests) <= 2 + rerequests, server.requests
            if rerequests == 0:
                assert "lost part of its answer" not in caplog.text
            for _ in range(500):  # (what it published live is followed, no gap, no resync)
                if sub.stats.last_seq is not None and sub.stats.last_seq >= 400:
                    break
                await asyncio.sleep(0.01)
            assert sub.stats.last_seq is not None and sub.stats.last_seq >= 400
            held = idx.engine_hashes("a")
            assert held == set(range(NEW, NEW + sub.stats.last_seq + 1))
            assert sub.stats.resyncs == 0 and sub.stats.gaps == 0 and sub.stats.restarts == 0
    finally:
        pub.close(0)
