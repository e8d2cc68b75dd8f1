"""Review s16-kv finding 2 (the reviewer's test, adapted; e246eb1):
the lost-tail check's allowance counts the live batches read off the SUB
socket from the checked request's send until the check's answer has been read, so batches the engine
published AFTER it served the check (they are not in the check's answer and cannot explain its growth)
are counted too. On a busy engine, the batches it publishes while the subscriber is still reading the
check's answer (vLLM's publisher thread moves on as soon as the ROUTER has queued the answer; the events it
queued meanwhile go out at once) make up for the check's own lost tail: review s15-fixes-b finding 2 comes
back. The same life's live batch is dropped as "an earlier engine life's" (stale_dropped, WARNING).

Same losses as tests/datalayer/test_kv_lost_tail_twice.py (the gap's answer from 151 loses 300..; the
check from 299 loses 380..: grew by 80, an answer longer than ``WHOLE_ANSWER_MAX``, whose end is checked;
since k8s18 a gap's shorter answer is whole), but the engine publishes 60 batches of the same life as it
ends the check's answer. The 60 arrive before the subscriber has finished with that answer, so they counted
toward the growth: "confirmed", batch 400 dropped. Correct: the check's growth (80) is not explained by what
the engine published between the two services (nothing), so the tail was lost again and a third request
heals it.

Fails on main (stale_dropped 1). (At e246eb1's parent it fails too: any growth confirmed.)

Failed on main at adca128 (stale_dropped 1, requests [0, 150, 151, 299, 151, 402]).
Fixed (fixkv16): the allowance counts only the window's live batches numbered below the check's end.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life, loopback_xpub

NEW = 2_000_000


async def test_batches_published_after_the_check_was_served_do_not_confirm_a_lost_tail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    life = engine_life(NEW, 461)
    pub, port = loopback_xpub()
    server: VLLMShapedReplay
    gap_request: list[int] = []  # (the gap's first request's number: the losses hit it and its check only)

    def lose(n: int, seq: int | None) -> bool:
        start = server.requests[n - 1]
        if n == 1 and seq == 0:
            assert pub.poll(5000), "the SUB never subscribed"
            pub.recv()
        if start == 151 and not gap_request:
            gap_request.append(n)
        if not gap_request or n not in (gap_request[0], gap_request[0] + 1):
            return False
        if start == 299 and seq is None:
            # the check's answer is out (its tail from 380 lost): the engine's publisher thread goes on,
            # publishing (then buffering) what it queued meanwhile, while the subscriber reads the answer
            for k in range(401, 461):
                pub.send_multipart([b"", k.to_bytes(8, "big"), life[k]])
                server.buffer.append((k, life[k]))
            return False
        if seq is None:
            return False
        return (start == 151 and seq >= 300) or (start == 299 and seq >= 380)

    server = VLLMShapedReplay(life[:151], lose=lose)
    caplog.set_level(logging.WARNING, logger="kvgate.datalayer.kvsubscriber")
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert sub.stats.last_seq == 150
            server.buffer = list(enumerate(life[:401]))  # the same life went on to 400, all buffered
            # its newest, live (151-399 missed on the socket): a gap the replay must heal
            await asyncio.to_thread(pub.send_multipart, [b"", (400).to_bytes(8, "big"), life[400]])
            for _ in range(1000):
                if sub.stats.last_seq is not None and sub.stats.last_seq >= 460:
                    break
                await asyncio.sleep(0.01)
            assert sub.stats.stale_dropped == 0, (
                f"the same life's batch 400 was dropped as an earlier life's (requests {server.requests}, "
                f"stale_dropped {sub.stats.stale_dropped}, re-requests {sub.stats.fetch_rerequests})"
            )
            assert "an earlier engine life's" not in caplog.text
            assert idx.engine_hashes("a") == set(range(NEW, NEW + 461))
    finally:
        pub.close(0)
