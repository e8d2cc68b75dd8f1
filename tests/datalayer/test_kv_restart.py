"""A KV-event subscriber whose socket failed is restarted by its manager (kvflake13).

Before, it stayed registered and stopped: its endpoint's index entries, cleared at the failure, stayed
empty until the endpoint was removed and added again. Now the manager restarts it after a capped,
jittered back-off (``RestartBackoff``; the sleep, clock and randomness are injected here), and it catches up
again from the engine's replay socket."""

from __future__ import annotations

import asyncio
import errno as errno_mod
import random
import socket

import pytest
import zmq
import zmq.asyncio
from prometheus_client import REGISTRY

from datalayer.test_kvevents import FakeVLLMPublisher, _connected, _until, batch, stored_map
from kvgate.bench.ports import free_port
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager, KVEventSubscriber
from kvgate.datalayer.kvsubscriber import RestartBackoff


def _fail_next_drain(sub: KVEventSubscriber) -> None:
    """The next drain meets a socket error (as a terminated context gives), once."""

    def fail_once() -> None:
        del sub._drain
        raise zmq.ZMQError(zmq.ETERM)

    sub._drain = fail_once  # type: ignore[method-assign]


async def _followed_again(pub: FakeVLLMPublisher, idx: BlockIndex) -> None:
    """Live batches reach the index again: new blocks until one arrives (the new socket's subscription
    takes a while to reach the PUB, which drops what it sends before)."""
    for i in range(500):
        await pub.publish(batch(stored_map([50_000 + i], None, [2] * 4)))
        await asyncio.sleep(0.01)
        if any(50_000 <= h < 50_500 for h in idx.engine_hashes("a")):
            return
    raise AssertionError("live batches not followed again")


class Sleeps:
    """An injected sleep: notes each delay, and returns at once unless ``hold`` (then until cancelled)."""

    def __init__(self, hold: bool = False) -> None:
        self.delays: list[float] = []
        self.hold = hold
        self.cancelled = 0

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.hold:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


@pytest.mark.parametrize("replay", [True, False])
async def test_a_subscriber_whose_socket_failed_comes_back_and_the_index_fills_again(replay):
    """Failed before: after the socket error the subscriber stayed stopped and the index empty."""
    sleeps = Sleeps()
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx, sleep=sleeps, rng=random.Random(0))
    counted = REGISTRY.get_sample_value("kvgate_kv_events_subscriber_restarts_total")
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint if replay else None)
        await _connected(pub, sub)
        _fail_next_drain(sub)
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        await _until(lambda: sub.stats.resubscribes == 1)
        assert mgr.restarts == 1 and mgr.subscribers["a"] is sub
        assert REGISTRY.get_sample_value("kvgate_kv_events_subscriber_restarts_total") == (counted or 0) + 1
        b = RestartBackoff()
        assert len(sleeps.delays) == 1 and b.initial * (1 - b.jitter) <= sleeps.delays[0] <= b.initial
        if replay:  # caught up again from the engine's replay buffer: every block it published
            await _until(lambda: idx.num_blocks("a") == pub.seq)
        await _followed_again(pub, idx)
        assert sub.stats.resyncs == 1  # (the failure's clear; none since)
    finally:
        await mgr.close()
        await pub.close()


@pytest.mark.parametrize("how", ["remove", "drop", "close", "sync"])
async def test_letting_go_during_the_back_off_ends_cleanly_and_restarts_nothing(how):
    """Failed before (no restart was ever waited for). The pending restart is cancelled; nothing restarts."""
    sleeps = Sleeps(hold=True)
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx, sleep=sleeps, rng=random.Random(0))
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        await _connected(pub, sub)
        _fail_next_drain(sub)
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        await _until(lambda: len(sleeps.delays) == 1)
        restart = mgr._restarting["a"]
        async with asyncio.timeout(5):
            if how == "remove":
                await mgr.remove("a")
            elif how == "drop":
                mgr.drop("a")
                await asyncio.wait([restart])
            elif how == "close":
                await mgr.close()
            else:
                await mgr.sync([])
        assert restart.done() and sleeps.cancelled == 1 and mgr._restarting == {}
        await asyncio.sleep(0.1)
        assert sub.stats.resubscribes == 0 and mgr.restarts == 0 and sub._task is None
        assert idx.num_blocks("a") == 0 and mgr.subscribers == {}
        if how != "close":  # (``close`` stops the subscribers and leaves the index as it is)
            assert idx.endpoints() == []
    finally:
        await mgr.close()
        await pub.close()


async def test_a_subscriber_stopped_during_the_back_off_is_not_restarted():
    """Its own ``stop()`` (it is detached): the manager's restart, once the back-off is over, leaves it."""
    release = asyncio.Event()
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await release.wait()

    pub = FakeVLLMPublisher()
    mgr = KVEventsManager(BlockIndex(), sleep=sleep)
    try:
        sub = await mgr.add("a", pub.endpoint)
        await _connected(pub, sub)
        _fail_next_drain(sub)
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        await _until(lambda: len(delays) == 1)
        await sub.stop()
        restart = mgr._restarting["a"]
        release.set()
        await asyncio.wait([restart])
        assert sub.stats.resubscribes == 0 and sub._task is None and mgr._restarting == {}
    finally:
        await mgr.close()
        await pub.close()


async def test_restarts_in_a_row_back_off_up_to_the_cap_and_a_healthy_run_starts_again():
    now = [0.0]
    sleeps = Sleeps()
    backoff = RestartBackoff(initial=0.5, maximum=2.0, factor=2.0, jitter=0.5, healthy_s=60.0)
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx, backoff=backoff, sleep=sleeps, clock=lambda: now[0], rng=random.Random(1))
    try:
        sub = await mgr.add("a", pub.endpoint)
        await _connected(pub, sub)
        for n in range(1, 6):
            if n == 5:
                now[0] += 60.0  # ran a healthy minute since its last restart
            _fail_next_drain(sub)
            await _until(lambda n=n: sub._task is not None and not sub._task.done() and sub._sock is not None)
            for i in range(500):  # (until one reaches the restarted socket's subscription)
                await pub.publish(batch(stored_map([100 * n + i], None, [n] * 4)))
                await asyncio.sleep(0.01)
                if sub.stats.resubscribes == n:
                    break
            await _until(lambda n=n: sub.stats.resubscribes == n)
        caps = [0.5, 1.0, 2.0, 2.0, 0.5]  # the 5th after a healthy run: from the start again
        assert len(sleeps.delays) == 5
        for d, cap in zip(sleeps.delays, caps, strict=True):
            assert cap * (1 - backoff.jitter) <= d <= cap, sleeps.delays
        assert len(set(sleeps.delays)) == 5  # (jittered)
        assert mgr.restarts == 5
    finally:
        await mgr.close()
        await pub.close()


def test_the_back_off_is_capped_and_jittered_below_the_cap():
    b = RestartBackoff(initial=0.5, maximum=30.0, factor=2.0, jitter=0.5)
    rng = random.Random(0)
    for attempt in (1, 2, 5, 6, 7, 100, 10_000):
        base = min(30.0, 0.5 * 2.0 ** (attempt - 1)) if attempt < 64 else 30.0
        for _ in range(50):
            assert base * 0.5 <= b.delay(attempt, rng) <= base <= 30.0


async def test_a_restart_that_cannot_bind_yet_is_tried_again():
    """Bind mode (vLLM connects to us): the restarted socket's bind can meet the address still held (ZMQ
    frees a closed socket's port later, on its I/O thread). That ends as a failed socket does, and the
    manager tries again after the next back-off; before, the task ended on the exception, never retried."""
    port = free_port()  # (spare and claimed: no other process binds it between this test's binds)
    address = f"tcp://127.0.0.1:{port}"
    gate = [asyncio.Event(), asyncio.Event()]
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await gate[len(delays) - 1].wait()

    idx = BlockIndex()
    mgr = KVEventsManager(idx, sleep=sleep, rng=random.Random(0))
    ctx = zmq.asyncio.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    holder = None
    try:
        sub = await mgr.add("a", address, bind=True)
        _fail_next_drain(sub)
        pub.connect(address)
        await _until(lambda: _sent(pub, 0) and len(delays) == 1)
        await _until(lambda: sub._task is not None and sub._task.done())
        await asyncio.sleep(0.3)  # (the failed socket's port is free again)
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (the PUB's old connections linger)
        holder.bind(("127.0.0.1", port))  # someone else holds the address when the restart binds
        holder.listen()
        gate[0].set()
        await _until(lambda: len(delays) == 2)  # the bind failed: a second back-off, longer
        assert sub.stats.resubscribes == 1 and mgr.restarts == 1
        b = RestartBackoff()
        assert b.initial * b.factor * (1 - b.jitter) <= delays[1] <= b.initial * b.factor
        holder.close()
        holder = None
        await asyncio.sleep(0.1)
        gate[1].set()
        await _until(lambda: sub.stats.resubscribes == 2 and sub._sock is not None)
        for i in range(500):  # the engine's PUB reconnects by itself
            await pub.send_multipart([b"", i.to_bytes(8, "big"), batch(stored_map([i + 1], None, [0] * 4))])
            await asyncio.sleep(0.01)
            if idx.num_blocks("a"):
                break
        assert idx.num_blocks("a") > 0
    finally:
        if holder is not None:
            holder.close()
        pub.close(0)
        await mgr.close()


def _sent(pub: zmq.asyncio.Socket, seq: int) -> bool:
    """Publish one probe without waiting (a PUB send never blocks); always True, for use in a condition."""
    pub.send_multipart([b"", seq.to_bytes(8, "big"), batch(stored_map([seq + 1], None, [0] * 4))])
    return True


@pytest.mark.parametrize("errno", [errno_mod.EMFILE, zmq.ETERM])
async def test_a_restart_that_cannot_make_its_socket_is_tried_again_unless_the_context_ended(
    monkeypatch, errno
):
    """Out of file descriptors when the restart makes its socket: tried again after the next back-off
    (before, the task ended on the exception and was never retried). A terminated context (the process is
    ending) is not tried again."""
    sleeps = Sleeps()
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx, sleep=sleeps, rng=random.Random(0))
    real_shadow = zmq.Context.shadow
    fails = [1]

    class Refusing:
        def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
            self.ctx = ctx

        def socket(self, kind: int) -> zmq.Socket[bytes]:
            if fails[0]:
                fails[0] -= 1
                raise zmq.ZMQError(errno)
            return self.ctx.socket(kind)

    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        await _connected(pub, sub)
        monkeypatch.setattr(zmq.Context, "shadow", lambda address: Refusing(real_shadow(address)))
        _fail_next_drain(sub)
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        if errno == zmq.ETERM:
            await _until(lambda: fails[0] == 0 and sub._task is not None and sub._task.done())
            await asyncio.sleep(0.1)
            assert len(sleeps.delays) == 1 and sub.stats.resubscribes == 1
            return
        await _until(lambda: sub.stats.resubscribes == 2)
        assert len(sleeps.delays) == 2
        await _until(lambda: idx.num_blocks("a") == pub.seq)  # caught up again
        await _followed_again(pub, idx)
    finally:
        await mgr.close()
        await pub.close()
