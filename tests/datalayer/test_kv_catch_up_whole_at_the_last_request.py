"""Review s16-kv finding 3 (the reviewer's test, adapted; 76c750c):
a catch-up whose answer came whole at the fetch's last allowed request
(FETCH_MAX_ROUNDS = 16) is now thrown away: the final lost-tail check has no request left, so the fetch is
"lost" and the catch-up skipped. Before 76c750c the whole answer was applied.

The check spends one of the 16 requests that docs/precise-prefix.md budgets for the buffer itself ("vLLM's
default buffer_steps (10,000) fits in 16 requests while each gets at least 625 batches": now 15 requests,
667 each). Here each of the first 15 answers has a hole (the ROUTER dropped one message), so each
re-request gets 19 batches further; the 16th gets the rest and the end marker.

Passes at 76c750c^ (e246eb1): 400 batches applied in 16 requests. Fails on main: catch-up skipped.

Failed on main at adca128 (replayed 0).
Fixed (fixkv16): the end check is a request past FETCH_MAX_ROUNDS.
"""

from __future__ import annotations

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life
from kvgate.datalayer import kvsubscriber

NEW = 2_000_000


async def test_a_catch_up_whole_at_the_16th_request_is_used() -> None:
    assert kvsubscriber.FETCH_MAX_ROUNDS == 16
    life = engine_life(NEW, 400)
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        # requests 1-15: a hole 20 batches after the request's start (the next asks from start + 19)
        if seq is None or n >= 16:
            return False
        return seq == server.requests[n - 1] + 20

    server = VLLMShapedReplay(life, lose=lose)
    async with caught_up(server) as (sub, idx):
        assert server.requests[:16] == [19 * i for i in range(16)], server.requests
        assert sub.stats.last_seq == 399, (
            f"the whole answer (16 requests) was thrown away: requests {server.requests}, "
            f"replayed {sub.stats.replayed}"
        )
        assert idx.engine_hashes("a") == set(range(NEW, NEW + 400))
