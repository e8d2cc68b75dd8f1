"""Review s15-kv L1 (the reviewer's test, adapted; over a real PUB socket since kv16). kv15's lost-tail
check (e11e8f5, ``_fetch``: an answer that ends short with batches is asked again from its last batch, "the
same end confirms it") read an engine that published a batch between the two requests as "a lost tail"
(counted in fetch_rerequests, WARNING "lost part of its answer") and asked again; an engine that publishes
one batch per pass of its publisher loop between every two requests (vLLM serves one replay request per
pass, and publishes one queued batch per pass) never confirmed: after FETCH_MAX_ROUNDS the fetch was
"lost", ``_replay`` said "failed", the endpoint was resynced (the new life's state cleared) and the dead
life's batch APPLIED. Before kv15 (a012fcd) the first answer's end was the verdict. Passes on a012fcd,
failed on 5cff9de. fixkv15 then confirmed any answer that went further; kv16 lets it go further only by
the live batches the subscriber received between the two requests (review s15-fixes-b 2: two lost tails
were confirmed as another life). Here the engine publishes each batch on its PUB before it buffers it, as
vLLM does, so the subscriber receives what the check's answer has more: one check, no re-request
counted, nothing logged. (The gap's answer, 151-299, is longer than ``WHOLE_ANSWER_MAX``: since k8s18 a
shorter one is whole, its end not checked.)
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life, loopback_xpub

OLD, NEW = 1_000_000, 2_000_000


async def test_a_dead_life_s_batch_is_dropped_while_the_engine_keeps_publishing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = engine_life(OLD, 401), engine_life(NEW, 400)
    pub, port = loopback_xpub()
    busy = False
    server: VLLMShapedReplay

    def publish_between(n: int, seq: int | None) -> bool:
        # (on the server's thread, the PUB's user while the test waits) the subscription, at the catch-up
        if n == 1 and seq == 0:
            assert pub.poll(5000), "the SUB never subscribed"
            pub.recv()
        # after each answer the engine's publisher loop publishes its next queued batch (busy engine)
        if seq is None and busy and len(server.buffer) < len(new):
            k = len(server.buffer)
            pub.send_multipart([b"", k.to_bytes(8, "big"), new[k]])
            server.buffer.append((k, new[k]))
        return False

    server = VLLMShapedReplay(new[:151], lose=publish_between)
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert sub.stats.last_seq == 150
            asked = len(server.requests)
            server.buffer = list(enumerate(new[:300]))  # the new life went on to 299
            caplog.set_level(logging.WARNING, logger="kvgate.datalayer.kvsubscriber")

            def publish() -> None:
                nonlocal busy
                # a dead life's batch queued on the socket, then the new life's 151-299
                pub.send_multipart([b"", (400).to_bytes(8, "big"), old[400]])
                for k in range(151, 300):
                    pub.send_multipart([b"", k.to_bytes(8, "big"), new[k]])
                busy = True

            await asyncio.to_thread(publish)
            for _ in range(1000):
                if sub.stats.last_seq is not None and sub.stats.last_seq >= 301:
                    break
                await asyncio.sleep(0.01)
            held = idx.engine_hashes("a")
            assert OLD + 400 not in held, (
                f"the dead life's batch was applied (requests {server.requests}, resyncs {sub.stats.resyncs})"
            )
            assert sub.stats.stale_dropped == 1
            assert sub.stats.resyncs == 0, "the new life's state was cleared"
            assert sub.stats.last_seq is not None and sub.stats.last_seq >= 301, sub.stats
            assert held == set(range(NEW, NEW + sub.stats.last_seq + 1))
            # the gap's request from 151 (its answer ends at 299), one check from 299 (it ends at 300, and
            # 300 came live meanwhile): settled (more requests only after a silence mid-answer on a loaded
            # machine, FETCH_SILENCE_S: each a re-request, logged)
            assert server.requests[asked] == 151, server.requests
            if sub.stats.fetch_rerequests == 0:
                assert server.requests[asked : asked + 2] == [151, 299], server.requests
                assert "lost part of its answer" not in caplog.text
    finally:
        pub.close(0)
