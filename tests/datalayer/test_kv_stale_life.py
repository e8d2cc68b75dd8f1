"""A join's catch-up that met another engine life (kv14: started again from seq 0) applies the new life's
buffer; the SUB socket may still hold the old life's live batches, published after the SUB connected and
before the engine died. Review s14-kv M3: the first of them (a sequence number past the catch-up) was
taken for a gap, whose replay the *new* engine answered whole but ending far before it, so the subscriber
resynced (clearing the new life's state the catch-up had just applied) and applied the dead engine's batch
on top: blocks of an engine life that no longer exists (over-report), and not the new life's.

A batch ``upto`` the engine published implies it published ``upto - 1`` before it, and its replay answer
reaches its newest batch; an answer of that engine that ended (end marker) before ``upto - 1`` therefore
says ``upto`` is another life's: dropped (``SubscriberStats.stale_dropped``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from datalayer.test_kv_replay_loss import (
    VLLMShapedReplay,
    caught_up,
    engine_life,
    loopback_xpub,
    restarting_replay,
)

OLD, NEW = 1_000_000, 2_000_000


async def test_an_old_life_live_batch_queued_behind_a_restarted_catch_up_is_not_applied():
    """(The review's test.) The old life's queued batches fed to ``_live`` in order after the catch-up.
    Failed before: the index held 10 blocks of the dead life, and none of the new life's."""
    old, new = engine_life(OLD, 410), engine_life(NEW, 200)
    server = restarting_replay(old[:400], new, lost_from=200)
    async with caught_up(server) as (sub, idx):
        assert sub.stats.fetch_restarts == 1, server.requests
        assert idx.engine_hashes("a") == set(range(NEW, NEW + 200))
        for seq in range(400, 410):
            await sub._live(seq, old[seq])
        held = idx.engine_hashes("a")
        stale = {h for h in held if h < NEW}
        assert not stale, f"the index holds {len(stale)} blocks of the dead engine life: {sorted(stale)[:5]}"
        assert held == set(range(NEW, NEW + 200)), f"the new life's state lost: {len(held)} held"
        assert sub.stats.stale_dropped == 10 and sub.stats.resyncs == 0


def _dead_life_then_restart(
    old: list[bytes], new: list[bytes], sndhwm: int | None = None
) -> tuple[VLLMShapedReplay, Any, int, list[int]]:
    """An engine whose replay holds the old life's 0-399 and whose PUB (``loopback_xpub(sndhwm)``), once
    the SUB has subscribed, sends the rest of ``old`` (400 on) live while the catch-up's first answer is
    sent; that answer loses its tail and the engine restarts (the new life's 0-199); later answers lose
    their batches from 200 on. The replay server, the PUB, its port and the batches it published."""
    pub, port = loopback_xpub(sndhwm)
    server: VLLMShapedReplay
    published: list[int] = []

    def lose(n: int, seq: int | None) -> bool:
        # (on the server's thread, the PUB's only user until the end of the catch-up's first answer)
        if n == 1 and seq == 0 and pub.poll(5000):  # the SUB has subscribed: the old life publishes live
            pub.recv()
            for s in range(400, len(old)):
                pub.send_multipart([b"", s.to_bytes(8, "big"), old[s]])
                published.append(s)
        if n == 1 and seq is None:  # the first answer's tail lost; then the engine restarts
            server.buffer = list(enumerate(new[:200]))
            return True
        return n == 1 and seq is not None and seq >= 200

    server = VLLMShapedReplay(old[:400], lose=lose)
    return server, pub, port, published


async def test_a_dead_life_s_batches_on_the_socket_are_dropped_and_the_new_life_is_followed():
    """End to end over real ZMQ sockets: the engine's PUB (an XPUB, to see the subscription arrive) sends
    the old life's batches 400-409 while the catch-up's first answer is being sent, that answer loses its
    tail, the engine restarts (200 batches of a new life), the re-request meets it and the catch-up starts
    again from 0. Then the new life publishes its batch 200. Failed before: 400-409 were applied after a
    resync, then batch 200 (seq <= 409: a "restart") cleared the index, which ended holding the new life's
    batch 200 alone. Now the index holds the new life's 0-200, nothing of the old one."""
    old, new = engine_life(OLD, 410), engine_life(NEW, 201)
    server, pub, port, published = _dead_life_then_restart(old, new)
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert published == list(range(400, 410)), "the SUB never subscribed"
            assert sub.stats.fetch_restarts == 1, server.requests
            server.buffer.append((200, new[200]))  # the new life stores and publishes its next batch
            await asyncio.to_thread(pub.send_multipart, [b"", (200).to_bytes(8, "big"), new[200]])
            for _ in range(1500):
                if sub.stats.last_seq == 200 and NEW + 200 in idx.engine_hashes("a"):
                    break
                await asyncio.sleep(0.02)
            held = idx.engine_hashes("a")
            stale = {h for h in held if h < NEW}
            assert not stale, (
                f"the index holds {len(stale)} blocks of the dead engine life: {sorted(stale)[:5]}"
            )
            assert held == set(range(NEW, NEW + 201)), f"the new life's state lost: {len(held)} held"
            assert sub.stats.stale_dropped == 10
    finally:
        pub.close(0)


async def test_a_gap_the_same_engine_life_fills_is_still_healed_by_replay():
    """The rule drops only a batch past the engine's whole answer: a live batch after a gap that the
    engine's buffer holds is applied after the replayed batches, as before (no drop, no resync)."""
    life = engine_life(NEW, 300)
    server = VLLMShapedReplay(life[:200])
    async with caught_up(server) as (sub, idx):
        server.buffer = list(enumerate(life[:251]))  # the engine went on; 200-249 missed, 250 arrives
        await sub._live(250, life[250])
        assert idx.engine_hashes("a") == set(range(NEW, NEW + 251))
        assert sub.stats.stale_dropped == 0 and sub.stats.resyncs == 0 and sub.stats.gaps == 1


async def test_a_dead_life_s_batch_at_or_below_the_catch_up_is_not_taken_for_a_restart():
    """The same with a dead life that was shorter than the new one at the restart: its queued batches
    100-109 are at or below what the catch-up applied (0-199), so they looked like an engine restart: the
    endpoint was cleared and the dead engine's batch applied, the new life's next batch 200 then healed as
    a gap from it. Failed before (the new life's 0-99 lost, the dead life's blocks held). Now the engine's
    replay shows it holds another batch at that number: dropped."""
    old, new = engine_life(OLD, 110), engine_life(NEW, 201)
    server = restarting_replay(old[:100], new[:200], lost_from=50)
    async with caught_up(server) as (sub, idx):
        assert sub.stats.fetch_restarts == 1, server.requests
        for seq in range(100, 110):
            await sub._live(seq, old[seq])
        server.buffer.append((200, new[200]))
        await sub._live(200, new[200])
        held = idx.engine_hashes("a")
        stale = {h for h in held if h < NEW}
        assert not stale, f"the index holds {len(stale)} blocks of the dead engine life: {sorted(stale)[:5]}"
        assert held == set(range(NEW, NEW + 201)), f"the new life's state lost: {len(held)} held"
        assert sub.stats.stale_dropped == 10 and sub.stats.restarts == 0


async def test_an_engine_restart_after_the_catch_up_still_clears_the_endpoint():
    """A real restart (the engine's replay holds the batch just published, the same payload): cleared and
    followed from there, as before."""
    old, new = engine_life(OLD, 100), engine_life(NEW, 3)
    server = VLLMShapedReplay(old)
    async with caught_up(server) as (sub, idx):
        assert idx.engine_hashes("a") == set(range(OLD, OLD + 100))
        server.buffer = list(enumerate(new))
        for seq in range(3):
            await sub._live(seq, new[seq])
        assert idx.engine_hashes("a") == set(range(NEW, NEW + 3))
        assert sub.stats.restarts == 1 and sub.stats.stale_dropped == 0


async def test_a_gap_replay_whose_tail_was_lost_but_whose_end_marker_came_heals_the_gap(caplog):
    """vLLM's ROUTER drops what its pipe to the fetch does not hold while it sends the whole answer in one
    loop, then sends the end marker, which can get through once the pipe drained. Here the gap's answer
    (200-1298 missed, 1299 live) loses 700-1298 and keeps its end marker. Failed before (review s14-fixes
    L2): the answer looked like an engine whose newest was 699, so batch 1299 was dropped as an earlier
    life's and the gap stayed open. Now the end is asked again from the answer's last batch (699): the
    engine goes on past it, so the gap is healed by replay, no drop, no resync."""
    life = engine_life(NEW, 1300)
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        # the gap's request (from 200) loses 700.. (by start: the catch-up makes two, its end checked, kv16)
        return server.requests[n - 1] == 200 and seq is not None and seq >= 700

    server = VLLMShapedReplay(life[:200], lose=lose)
    async with caught_up(server) as (sub, idx):
        server.buffer = list(enumerate(life))
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            await sub._live(1299, life[1299])
        assert sub.stats.stale_dropped == 0, "the live batch was dropped as an earlier engine life's"
        assert idx.engine_hashes("a") == set(range(NEW, NEW + 1300))
        assert sub.stats.resyncs == 0 and sub.stats.replayed == 1299
        # (asked from 200, then again from where that answer ended; more if a loaded machine made a
        # silence mid-answer, FETCH_SILENCE_S)
        assert len([r for r in server.requests if r >= 200]) >= 2, server.requests
        assert sub.stats.fetch_rerequests >= 1 and "lost part of its answer" in caplog.text


async def test_an_answer_that_really_ends_before_the_gap_is_asked_once_more_and_the_batch_dropped(caplog):
    """The other side of the same check: the engine's newest is 299 (an answer 151-299, end marker: more
    than ``WHOLE_ANSWER_MAX`` batches, so its end is checked; a shorter one is whole since k8s18,
    test_kv_gap_short_answers.py) and a dead life's batch 400 arrives. Asked again from 299, the answer
    ends there again: the engine holds nothing newer, batch 400 is dropped as before. That request is no
    re-request after a loss (not counted, no warning)."""
    life = engine_life(NEW, 300)
    server = VLLMShapedReplay(life[:151])
    async with caught_up(server) as (sub, idx):
        server.buffer = list(enumerate(life))
        asked, rerequests = len(server.requests), sub.stats.fetch_rerequests
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            await sub._live(400, engine_life(OLD, 401)[400])
        assert server.requests[asked:] == [151, 299]
        assert idx.engine_hashes("a") == set(range(NEW, NEW + 151))
        assert sub.stats.stale_dropped == 1 and sub.stats.resyncs == 0
        assert sub.stats.fetch_rerequests == rerequests and "lost part of its answer" not in caplog.text


async def test_a_dead_life_s_batch_numbered_the_new_life_s_newest_plus_one_is_not_applied():
    """The catch-up met a new engine life (newest 199); the dead life's queued batch 200 follows
    ``last_seq`` exactly. Failed before (review s14-fixes L3): applied as the next batch, and the new
    life's own 200 then came "backwards", was confirmed by the engine and cleared the endpoint: the index
    held the new life's batch 200 alone. Now a batch that follows a life change is checked against the
    engine's replay first: the dead one is dropped, the new life's 200 applied."""
    old, new = engine_life(OLD, 410), engine_life(NEW, 201)
    server = restarting_replay(old[:400], new[:200], lost_from=200)
    async with caught_up(server) as (sub, idx):
        assert sub.stats.fetch_restarts == 1 and sub.stats.last_seq == 199, server.requests
        await sub._live(200, old[200])
        server.buffer.append((200, new[200]))
        await sub._live(200, new[200])
        held = idx.engine_hashes("a")
        stale = {h for h in held if h < NEW}
        assert not stale, f"the index holds {len(stale)} blocks of the dead engine life: {sorted(stale)[:5]}"
        assert held == set(range(NEW, NEW + 201)), f"the new life's state lost: {len(held)} held"
        assert sub.stats.stale_dropped == 1 and sub.stats.restarts == 0 and sub.stats.resyncs == 0


async def test_the_check_after_a_life_change_runs_on_batches_read_off_the_socket():
    """The same over a real PUB socket (the intake's fast path applies a batch that follows ``last_seq``
    without a replay; it now leaves it to the check while a dead life's batches may be queued), and once a
    batch of the engine's passed the check, the next ones are applied without it."""
    old, new = engine_life(OLD, 410), engine_life(NEW, 203)
    pub, port = loopback_xpub()
    server = restarting_replay(old[:400], new[:200], lost_from=200)
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert sub.stats.fetch_restarts == 1, server.requests
            assert await asyncio.to_thread(pub.poll, 5000), "the SUB never subscribed"
            pub.recv()
            server.buffer.extend([(200, new[200]), (201, new[201]), (202, new[202])])
            asked = len(server.requests)
            for seq, payload in ((200, old[200]), (200, new[200]), (201, new[201]), (202, new[202])):
                await asyncio.to_thread(pub.send_multipart, [b"", seq.to_bytes(8, "big"), payload])
            for _ in range(1500):
                if sub.stats.last_seq == 202:
                    break
                await asyncio.sleep(0.02)
            held = idx.engine_hashes("a")
            assert not {h for h in held if h < NEW}, "the dead life's batch 200 was applied"
            assert held == set(range(NEW, NEW + 203)), f"the new life's state lost: {len(held)} held"
            assert sub.stats.stale_dropped == 1
            assert server.requests[asked:] == [200, 200], server.requests  # (201, 202: not asked)
    finally:
        pub.close(0)


async def test_a_dead_life_that_queued_more_than_a_thousand_batches_is_dropped_whole():
    """The dead life's batches 400-1599 (1,200) are queued on the SUB socket while the catch-up's first
    answer is sent; that answer loses its tail, the engine restarts (newest 199) and the catch-up starts
    again; then the new life publishes its 200. Failed before (final read s14-read-a I1): after 1,000
    drops, one replay round trip each, the streak's bound took the verdicts for wrong and applied the rest
    of the dead life after a resync. Now the batches read off the socket before a request are judged by
    its answer (the engine would hold any batch it published before it): a few requests, none of the dead
    life applied, the new life's 200 followed."""
    old, new = engine_life(OLD, 1600), engine_life(NEW, 201)
    server, pub, port, published = _dead_life_then_restart(old, new, sndhwm=10_000)
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert len(published) == 1200, "the SUB never subscribed"
            assert sub.stats.fetch_restarts == 1, server.requests
            server.buffer.append((200, new[200]))
            await asyncio.to_thread(pub.send_multipart, [b"", (200).to_bytes(8, "big"), new[200]])
            for _ in range(3000):
                if sub.stats.last_seq == 200:
                    break
                await asyncio.sleep(0.02)
            held = idx.engine_hashes("a")
            stale = {h for h in held if h < NEW}
            assert not stale, f"the index holds {len(stale)} blocks of the dead engine life"
            assert held == set(range(NEW, NEW + 201)), f"the new life's state lost: {len(held)} held"
            assert sub.stats.stale_dropped == 1200 and sub.stats.stale_overruled == 0
            checks = [r for r in server.requests if r >= 200]  # (the catch-up's: from 0 and 199)
            assert len(checks) < 50, f"{len(checks)} replay requests"
    finally:
        pub.close(0)
