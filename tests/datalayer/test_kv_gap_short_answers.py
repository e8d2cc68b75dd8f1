"""closing-s17 "Noticed and left undone" (KV): gap fetches kept the old lost-tail check. kvhub17 made a join's
catch-up take an answer of at most ``WHOLE_ANSWER_MAX`` (64) batches, its end marker come and no hole, as
whole (each request's answer goes into a new, empty pipe of the engine's ROUTER, which holds 1,000 messages
before it drops one); a gap's fetch still checked such an answer's end by one more request from its last
batch. On an engine with a tiny replay buffer (vLLM's ``buffer_steps`` 1-3) that publishes between two
requests, that batch has left the buffer by the check ("moved"): the gap fetch failed, the endpoint was
resynced (the live engine's state cleared) and a dead life's batch queued on the socket, which the first
answer had shown to be no batch of this engine, was applied. Now the gap's short answer is whole too: its
end is the verdict (the batch dropped as stale), one request. Real ZMQ on loopback (vLLM's replay shape on a
thread, ``VLLMShapedReplay``; a real PUB for the live batch).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life, loopback_xpub

OLD, NEW = 1_000_000, 2_000_000
LOG = "kvgate.datalayer.kvsubscriber"


@pytest.mark.parametrize("buffer_steps", [1, 3])
async def test_a_gap_fetch_s_short_answer_is_whole_on_a_busy_engine_with_a_tiny_buffer(
    buffer_steps: int, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = engine_life(OLD, 401), engine_life(NEW, 400)
    pub, port = loopback_xpub()
    published = [151]  # the engine's next sequence number; its buffer holds the newest ``buffer_steps``
    busy = False
    server: VLLMShapedReplay

    def publish_after(n: int, seq: int | None) -> bool:
        if n == 1 and seq == 151 - buffer_steps:  # (the catch-up: the SUB has subscribed by now)
            assert pub.poll(5000), "the SUB never subscribed"
            pub.recv()
        # after each answer the engine publishes as many batches as its buffer holds (to nobody: the
        # SUB hears nothing of them yet), so the batch an answer ended with has left the buffer
        if seq is None and busy:
            published[0] += buffer_steps
            server.buffer = [(s, new[s]) for s in range(published[0] - buffer_steps, published[0])]
        return False

    server = VLLMShapedReplay([], lose=publish_after)
    server.buffer = [(s, new[s]) for s in range(151 - buffer_steps, 151)]
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert sub.stats.last_seq == 150
            asked = len(server.requests)
            # the engine went on to 151 + buffer_steps - 1 (its buffer: those), then a dead life's batch
            # 400 arrives, queued on the socket
            published[0] += buffer_steps
            server.buffer = [(s, new[s]) for s in range(published[0] - buffer_steps, published[0])]
            busy = True
            caplog.set_level(logging.WARNING, logger=LOG)
            await asyncio.to_thread(pub.send_multipart, [b"", (400).to_bytes(8, "big"), old[400]])
            for _ in range(500):
                if sub.stats.stale_dropped or sub.stats.resyncs:
                    break
                await asyncio.sleep(0.01)
            held = idx.engine_hashes("a")
            assert OLD + 400 not in held, (
                f"the dead life's batch was applied (requests {server.requests[asked:]}, resyncs "
                f"{sub.stats.resyncs})"
            )
            assert sub.stats.resyncs == 0, f"the live engine's state was cleared: {server.requests[asked:]}"
            assert sub.stats.stale_dropped == 1
            assert held >= set(range(NEW + 151 - buffer_steps, NEW + 151))
            # one request, from the gap's start: its answer (the engine's buffer, then its end marker) whole
            assert server.requests[asked:] == [151], server.requests[asked:]
            assert sub.stats.fetch_rerequests == 0
            assert "lost part of its answer" not in caplog.text
    finally:
        pub.close(0)
