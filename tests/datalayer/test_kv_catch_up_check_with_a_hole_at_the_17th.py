"""Review s16-fixes-b K2 (f880674, Low, not a regression): "when the bound comes with only the end check
left, every answer having been whole, the catch-up uses its latest answer" does not hold when the check
itself (the 17th request) comes back with a hole: ``_fetch`` breaks at ``requests >= FETCH_MAX_ROUNDS``
with outcome "lost" and the catch-up whose 16th answer was whole is thrown away.

Requests 1-15 each have a hole (as in tests/datalayer/test_kv_catch_up_whole_at_the_last_request.py), the
16th is whole (end marker at 399). A busy engine then publishes 3 more batches; the check's answer from 399
loses 401 (its ROUTER dropped one message). Fails on main: catch-up skipped (nothing applied)."""

from __future__ import annotations

import pytest

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life
from kvgate.datalayer import kvsubscriber

pytestmark = pytest.mark.asyncio

NEW = 2_000_000


async def test_a_whole_16th_answer_is_used_when_the_17th_check_has_a_hole() -> None:
    assert kvsubscriber.FETCH_MAX_ROUNDS == 16
    life = engine_life(NEW, 403)
    server: VLLMShapedReplay
    published = [False]

    def lose(n: int, seq: int | None) -> bool:
        if seq is None:
            if n == 16 and not published[0]:  # (the engine publishes on after serving the 16th request)
                published[0] = True
                for k in range(400, 403):
                    server.buffer.append((k, life[k]))
            return False
        if n <= 15:
            return seq == server.requests[n - 1] + 20
        return n == 17 and seq == 401  # the check's answer loses a batch in its middle

    server = VLLMShapedReplay(life[:400], lose=lose)
    async with caught_up(server) as (sub, idx):
        assert len(server.requests) == 17, server.requests
        assert sub.stats.last_seq is not None and sub.stats.last_seq >= 399, (
            f"the catch-up was thrown away although its 16th answer was whole: requests {server.requests}, "
            f"replayed {sub.stats.replayed}"
        )
        assert set(range(NEW, NEW + 400)) <= idx.engine_hashes("a")
