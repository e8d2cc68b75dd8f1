"""Review s15-kv L1 (the reviewer's test, adapted). kv15's lost-tail check (e11e8f5, ``_fetch``: an
answer that ends short with batches is asked again from its last batch, "the same end confirms it") read
an engine that published a batch between the two requests as "a lost tail" (counted in fetch_rerequests,
WARNING "lost part of its answer") and asked again; an engine that publishes one batch per pass of its
publisher loop between every two requests (vLLM serves one replay request per pass, and publishes one
queued batch per pass) never confirmed: after FETCH_MAX_ROUNDS the fetch was "lost", ``_replay`` said
"failed", the endpoint was resynced (the new life's state cleared) and the dead life's batch APPLIED.
Before kv15 (a012fcd) the first answer's end was the verdict. Passes on a012fcd, failed on 5cff9de. Now a
re-asked answer that begins with the batch the first ended with, has no hole and ends short of the range
again confirms the end, even if it went further: one check, no re-request counted, nothing logged.
"""

from __future__ import annotations

import logging

import pytest

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life

OLD, NEW = 1_000_000, 2_000_000


async def test_a_dead_life_s_batch_is_dropped_while_the_engine_keeps_publishing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = engine_life(OLD, 401), engine_life(NEW, 400)
    busy = False
    server: VLLMShapedReplay

    def publish_between(n: int, seq: int | None) -> bool:
        # after each answer the engine's publisher loop publishes its next queued batch (busy engine)
        if seq is None and busy and len(server.buffer) < len(new):
            server.buffer.append((len(server.buffer), new[len(server.buffer)]))
        return False

    server = VLLMShapedReplay(new[:151], lose=publish_between)
    async with caught_up(server) as (sub, idx):
        assert sub.stats.last_seq == 150
        server.buffer = list(enumerate(new[:200]))  # the new life went on to 199 (151-199 still to come live)
        busy = True
        caplog.set_level(logging.WARNING, logger="kvgate.datalayer.kvsubscriber")
        await sub._live(400, old[400])  # a dead life's batch queued on the socket
        held = idx.engine_hashes("a")
        assert OLD + 400 not in held, (
            f"the dead life's batch was applied (requests {server.requests}, resyncs {sub.stats.resyncs})"
        )
        assert sub.stats.stale_dropped == 1
        assert sub.stats.resyncs == 0, "the new life's state was cleared"
        # the gap's request from 151 (its answer ends at 199), one check from 199 (it ends at 200): settled
        assert server.requests[1:] == [151, 199]
        assert sub.stats.fetch_rerequests == 0, "a confirmation counted as a lost tail"
        assert "lost part of its answer" not in caplog.text
