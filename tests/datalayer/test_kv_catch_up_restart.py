"""A join's catch-up whose engine restarted (or whose replay buffer wrapped) between two of its requests
starts again from sequence 0 (kv14): before, the fetch was dropped and the index stayed empty until the
first live batch. Bounded as any fetch (``FETCH_MAX_ROUNDS`` requests in all), nothing of the old
answer kept; a gap's bounded fetch is still dropped (its range belongs to the old life)."""

from __future__ import annotations

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life, restarting_replay
from kvgate.datalayer.kvevents import BlockIndex, KVEventSubscriber
from kvgate.datalayer.kvsubscriber import FETCH_MAX_ROUNDS


async def test_a_catch_up_whose_engine_restarted_between_requests_starts_again_from_zero():
    """The engine restarts after the first answer (its tail lost) and publishes 400 batches of its new
    life before the re-request. Failed before: the fetch was dropped ("the engine restarted between two
    requests"), the catch-up skipped, the index empty. Now: asked again from 0, the new life applied,
    nothing of the old."""
    old, new = engine_life(1_000_000, 400), engine_life(2_000_000, 400)
    server = restarting_replay(old, new, lost_from=200)
    async with caught_up(server) as (sub, idx):
        assert idx.engine_hashes("a") == set(range(2_000_000, 2_000_400)), server.requests
        # (then one from 399: the end checked, kv16; not a re-request)
        assert server.requests[:3] == [0, 199, 0] and server.requests[-1] == 399, server.requests
        assert sub.stats.fetch_restarts == 1 and sub.stats.fetch_rerequests == 2
        assert sub.stats.last_seq == 399


async def test_a_catch_up_whose_buffer_wrapped_between_requests_starts_again_from_zero(caplog):
    """The engine's buffer wraps between the two requests (batches 0-249 evicted, 400-499 published): the
    re-request's answer begins after the last batch got. Failed before: dropped (None). Now the whole
    buffer as it is now (250-499), logged as started again."""
    payloads = engine_life(1_000, 500)
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        if n == 1 and seq is None:
            server.buffer = list(enumerate(payloads))[250:]
            return True
        return n == 1 and seq is not None and seq >= 200

    server = VLLMShapedReplay(payloads[:400], lose=lose)
    try:
        sub = KVEventSubscriber(BlockIndex(), "a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint)
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            got = await sub._fetch(0)
        assert got is not None and [s for s, _ in got] == list(range(250, 500)), server.requests
        assert [p for _, p in got] == payloads[250:]
        # (499: the end checked)
        assert server.requests[:3] == [0, 199, 0] and server.requests[-1] == 499, server.requests
        assert sub.stats.fetch_restarts == 1
        assert "started again from seq 0 1 time(s)" in caplog.text, caplog.text
    finally:
        server.close()


async def test_a_gap_fetch_whose_engine_restarted_between_requests_is_still_dropped():
    """A gap's fetch [0, 400) is bounded by a live batch of the old life: another life's answer is never
    its range, so it is dropped as before (the gap then resyncs), not started again."""
    old, new = engine_life(1_000_000, 400), engine_life(2_000_000, 400)
    server = restarting_replay(old, new, lost_from=200)
    try:
        sub = KVEventSubscriber(BlockIndex(), "a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint)
        assert await sub._fetch(0, 400) is None
        assert server.requests == [0, 199] and sub.stats.fetch_restarts == 0
    finally:
        server.close()


async def test_an_engine_that_restarts_between_every_request_bounds_the_catch_up():
    """Each answer loses its tail and the engine restarts after it: the catch-up starts again each time,
    at most ``FETCH_MAX_ROUNDS`` requests in all, and applies nothing (no whole answer of one life)."""
    lives = [engine_life(1_000_000 * (k + 1), 300) for k in range(2 * FETCH_MAX_ROUNDS + 2)]
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        if seq is None:
            server.buffer = list(enumerate(lives[n]))  # the next request meets the next life
            return True
        return seq >= server.requests[n - 1] + 100

    server = VLLMShapedReplay(lives[0], lose=lose)
    async with caught_up(server, replay_timeout=1.0, within_s=60) as (sub, idx):
        # (16 requests, or fewer when they took longer than the fetch's 8 s bound on a loaded machine)
        assert 3 <= len(server.requests) <= FETCH_MAX_ROUNDS, server.requests
        assert idx.num_blocks("a") == 0 and sub.stats.last_seq is None
        assert sub.stats.fetch_restarts >= 1 and 0 in server.requests[1:]


async def test_a_restarted_catch_up_counts_only_what_the_answer_it_used_dropped(monkeypatch, caplog):
    """With the fetch's bound at 100 batches, the old life's answer of 300 (its end marker lost) drops
    200, the re-request meets the new life and the catch-up starts again: the new life's 300 drop 200
    more. The index lost 200 (new 0-199). Failed before (review s14-kv I2): ``fetch_dropped`` was 400, the
    drops of the answer given up counted too, while the warning said 200."""
    from kvgate.datalayer import kvsubscriber

    monkeypatch.setattr(kvsubscriber, "FETCH_MAX_BATCHES", 100)
    old, new = engine_life(1_000_000, 300), engine_life(2_000_000, 300)
    server = restarting_replay(old, new, lost_from=300)
    try:
        sub = KVEventSubscriber(BlockIndex(), "a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint)
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            got = await sub._fetch(0)
        assert got is not None and [p for _, p in got] == new[200:], server.requests
        assert sub.stats.fetch_restarts == 1
        assert sub.stats.fetch_dropped == 200, "a loss counted twice"
        assert "200 older batches dropped, the newest 100 kept" in caplog.text
    finally:
        server.close()
