"""Review s15-kv M1 (the reviewer's test, adapted): ``_pull_queued`` (kv15) reads up to PULL_MAX=10,000
queued live batches into the stash before a gap's replay request, and the task then applied every stash
entry in one ``while self._stash: await self._live(...)`` loop; ``_live`` of an in-order batch never
suspends, so all of them were applied without the event loop running anything else (the gateway's
requests included). Before kv15 the intake took at most DRAIN_MAX_BATCHES (64) per loop callback; now the
task's stash loop yields every DRAIN_MAX_BATCHES batches too. Time-free check: a ticker task records how
many batches were applied between two of its turns. Passes on a012fcd (pre-kv15), failed on 5cff9de
("3000 batches applied in one turn").
"""

from __future__ import annotations

import asyncio
import time

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, engine_life, loopback_xpub
from kvgate.datalayer import kvsubscriber

OLD, NEW = 1_000_000, 2_000_000
N = 3000


async def test_a_gap_with_a_backlog_queued_does_not_hold_the_event_loop():
    life = engine_life(NEW, 100 + N)
    pub, port = loopback_xpub(100_000)
    server = VLLMShapedReplay(life[:100])
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert await asyncio.to_thread(pub.poll, 5000), "the SUB never subscribed"
            pub.recv()
            assert sub.stats.last_seq == 99
            server.buffer = list(enumerate(life))  # the engine holds all it published
            deltas: list[int] = []
            stop = False

            async def ticker() -> None:
                prev = sub.stats.batches
                while not stop:
                    await asyncio.sleep(0)
                    now = sub.stats.batches
                    deltas.append(now - prev)
                    prev = now

            t = asyncio.get_running_loop().create_task(ticker())
            await asyncio.sleep(0)
            # Batch 100 lost on the PUB (a gap), then 101.. queued on the SUB (the loop held meanwhile, so
            # they are all there when the intake meets the gap).
            for seq in range(101, 100 + N):
                pub.send_multipart([b"", seq.to_bytes(8, "big"), life[seq]])
            time.sleep(1.0)  # noqa: ASYNC251 (the loop held on purpose: the backlog queues on the SUB)
            for _ in range(3000):
                if sub.stats.last_seq == 99 + N:
                    break
                await asyncio.sleep(0.01)
            stop = True
            await t
            assert sub.stats.last_seq == 99 + N
            assert idx.engine_hashes("a") == set(range(NEW, NEW + 100 + N))
            worst = max(deltas)
            assert worst <= 200, f"{worst} batches applied in one turn of the event loop (nothing else ran)"
    finally:
        pub.close(0)
        server.close()


async def test_a_pull_stops_at_its_byte_bound(monkeypatch):
    """``PULL_MAX_BYTES`` bounds what one pull reads off the socket (review s15-kv M1: the pull was bounded
    in count only): at one byte each pull reads one batch, so a replay port of another stream judges a
    backlog a batch or two per request, not all of it with one; every batch is still dropped."""
    monkeypatch.setattr(kvsubscriber, "PULL_MAX_BYTES", 1)
    n = 40
    life = engine_life(NEW, 101 + n)
    pub, port = loopback_xpub()
    server = VLLMShapedReplay(life[:100])
    try:
        async with caught_up(server, f"tcp://127.0.0.1:{port}") as (sub, idx):
            assert await asyncio.to_thread(pub.poll, 5000), "the SUB never subscribed"
            pub.recv()
            server.buffer = [(s, engine_life(OLD, 3)[s]) for s in range(3)]  # another stream's
            before = len(server.requests)
            for seq in range(101, 101 + n):  # 100 lost
                pub.send_multipart([b"", seq.to_bytes(8, "big"), life[seq]])
            time.sleep(0.5)  # noqa: ASYNC251 (the loop held on purpose: the backlog queues on the SUB)
            for _ in range(1000):
                if sub.stats.stale_dropped == n:
                    break
                await asyncio.sleep(0.01)
            assert sub.stats.stale_dropped == n
            assert len(server.requests) - before >= n // 4, server.requests
            assert idx.engine_hashes("a") == set(range(NEW, NEW + 100))
    finally:
        pub.close(0)
        server.close()
