"""Review s16-kv finding 1 (the reviewer's test, adapted; 76c750c + e246eb1):
a join's catch-up on a busy engine whose live batches have not
reached the SUB socket yet is judged a lost tail at every check and thrown away after 16 requests.

76c750c checks every catch-up answer that held batches by one more request from its last batch, and
e246eb1 lets that check's answer go further than the checked one only by the live batches the SUB socket
delivered meanwhile (``_heard``). The rule assumes that every batch the engine published between two
replay services has reached the SUB by the time the check's answer is read. At a join that is often not
so: in bind mode (``--kv-events-bind``, the engine's PUB connects to the gateway) vLLM's PUB reconnects
every 100 ms (ZMQ's ``reconnect_ivl``), and in connect mode the subscription takes a handshake; a busy
engine publishes (to nobody) meanwhile, and vLLM serves one replay request per publisher pass. Each check's
answer then grows by one batch while ``_heard`` stays put: "lost its tail" again, another check... until
FETCH_MAX_ROUNDS (16): the fetch is "lost" and the catch-up skipped ("gave no whole answer"), although
every answer was whole. Before 76c750c the first answer was applied.

Passes at 76c750c^ (e246eb1): one request, 400 batches applied. Fails on main: 16 requests, nothing.

Failed on main at adca128 (requests [0, 399, 400, ..., 413], replayed 0). Fixed (fixkv16): when the
bound comes with only the end check left, every answer whole, the catch-up uses its latest answer, and
its WARNING says the end was not confirmed (not "a buffer longer than 16 requests reach").
"""

from __future__ import annotations

import logging

import pytest

from datalayer.test_kv_replay_loss import busy_replay, caught_up, engine_life
from kvgate.datalayer import kvsubscriber

NEW = 2_000_000


async def test_a_catch_up_on_a_busy_engine_is_used_before_its_live_batches_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.datalayer.kvsubscriber")
    life = engine_life(NEW, 440)
    # After each answer the engine's publisher loop publishes its next batch (a busy engine: one per
    # pass, vLLM serves one replay request per pass). Its PUB is not connected to this SUB yet (the
    # catch-up's live endpoint below has no engine behind it: nothing arrives live).
    server = busy_replay(life, 400)
    async with caught_up(server) as (sub, idx):
        assert sub.stats.last_seq is not None and sub.stats.last_seq >= 399, (
            f"the catch-up was thrown away: requests {server.requests}, "
            f"re-requests {sub.stats.fetch_rerequests}, replayed {sub.stats.replayed}"
        )
        held = idx.engine_hashes("a")
        assert set(range(NEW, NEW + 400)) <= held
        assert len(server.requests) <= kvsubscriber.FETCH_MAX_ROUNDS + 1, server.requests
        assert "a buffer longer than" not in caplog.text
        assert "gave no whole answer" not in caplog.text
