"""Review s13-kv (fixkv): a catch-up applies only a whole replay answer (M1), a re-request must come from
the same engine life (L2), an address that can never work fails ``add`` (L1), a restarted subscriber is
not caught up before its new catch-up ran (L3), ``RestartBackoff`` checks its settings (N2), the silence
limit follows the replay timeout (I2). Adapted from /work/team/reviews/s13-kv-tests/ (rev-kv)."""

from __future__ import annotations

import asyncio
import errno
import random

import msgspec
import pytest
import zmq

from datalayer.test_kv_replay_loss import VLLMShapedReplay, caught_up, restarting_replay
from datalayer.test_kvevents import FakeVLLMPublisher, _connected, _until, batch, stored_map
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager, KVEventSubscriber
from kvgate.datalayer.kvsubscriber import RestartBackoff

enc = msgspec.msgpack.Encoder()


def removed(hashes: list[int]) -> dict:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU", "group_idx": 0}


def _engine(stores: int, removes_per_batch: int) -> list[bytes]:
    """``stores`` batches storing one block each (hash 1_000_000 + i), then batches removing all of them
    again, ``removes_per_batch`` per batch: the engine holds no block at the end."""
    out = [batch(stored_map([1_000_000 + i], None, [i % 50] * 4)) for i in range(stores)]
    for j in range(0, stores, removes_per_batch):
        out.append(batch(removed([1_000_000 + h for h in range(j, min(stores, j + removes_per_batch))])))
    return out


async def test_a_catch_up_that_used_up_its_requests_applies_no_stale_prefix(caplog):
    """M1: 20,000 batches (16,000 stores, then 4,000 batches removing them all: the engine holds none);
    each answer delivers only its first 1,000 messages, so 16 requests stop short of the end. Failed
    before: the prefix they got was applied (10,000 blocks over-reported), and logged as "the newest
    10000 kept" although they were not the engine's newest (N3)."""
    payloads = _engine(16_000, 4)
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:  # only the first 1,000 messages of each answer arrive
        return seq is None or seq >= server.requests[n - 1] + 1_000

    server = VLLMShapedReplay(payloads, lose=lose)
    idx = BlockIndex(default_capacity=1 << 20)
    mgr = KVEventsManager(idx, replay_timeout=1.0)
    try:
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            sub = await mgr.add("a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint)  # an idle engine
            async with asyncio.timeout(60):
                await sub.wait_caught_up()
        held = idx.num_blocks("a")
        assert held == 0, f"the index holds {held} blocks of an engine that holds none ({server.requests})"
        # (16 requests, or fewer when they took longer than the fetch's 8 s bound on a loaded machine, kv14)
        assert len(server.requests) <= 16 and sub.stats.last_seq is None
        text = caplog.text
        assert "kept" not in text and ("stopped short" in text or "time ran out" in text), text
    finally:
        await mgr.close()
        server.close()


async def test_a_catch_up_whose_re_request_got_no_answer_applies_no_stale_prefix(caplog):
    """M1: the first answer loses its tail from batch 300 on (and its end marker), the re-request gets no
    answer. Failed before: batches 0-299 were applied, although 300-399 removed every one of their blocks."""
    payloads = _engine(300, 3)
    server = VLLMShapedReplay(payloads, lose=lambda n, seq: n >= 2 or seq is None or seq >= 300)
    idx = BlockIndex()
    mgr = KVEventsManager(idx, replay_timeout=0.5)
    try:
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            sub = await mgr.add("a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint)
            async with asyncio.timeout(30):
                await sub.wait_caught_up()
        await asyncio.sleep(0.2)
        held = idx.num_blocks("a")
        assert held == 0, f"the index holds {held} blocks the engine removed (requests {server.requests})"
        text = caplog.text
        assert "no answer to the last one; the fetch is not used" in text and "catch-up skipped" in text
    finally:
        await mgr.close()
        server.close()


async def test_a_re_request_answered_by_a_restarted_engine_is_not_spliced_onto_the_first_answer():
    """L2: the engine restarts between the first request (its tail lost) and the re-request, and has
    published past it. Failed before: the old life's first 200 batches and the new life's next ones were
    applied as one run. Now the re-request asks from the last batch got, whose payload differs: dropped."""
    old = [batch(stored_map([1_000_000 + i], None, [i % 50] * 4)) for i in range(400)]
    new = [batch(stored_map([2_000_000 + i], None, [(i + 7) % 50] * 4)) for i in range(400)]
    server = restarting_replay(old, new, lost_from=200)
    async with caught_up(server) as (_sub, idx):
        stale = {h for h in idx.engine_hashes("a") if h < 2_000_000}
        assert not stale, f"{len(stale)} blocks of the engine's previous life (requests {server.requests})"
        assert server.requests[:2] == [0, 199]


async def test_a_re_request_from_the_same_engine_overlaps_by_one_batch_and_completes():
    """L2's check passes when the same engine answers: the overlapping batch is not kept twice."""
    payloads = [batch(stored_map([1_000 + i], None, [i % 50] * 4)) for i in range(400)]
    server = VLLMShapedReplay(payloads, lose=lambda n, seq: n == 1 and (seq is None or seq >= 200))
    try:
        sub = KVEventSubscriber(BlockIndex(), "a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint)
        got = await sub._fetch(0)
        assert got is not None and [s for s, _ in got] == list(range(400))
        assert [p for _, p in got] == payloads and server.requests[:2] == [0, 199]
    finally:
        server.close()


async def test_a_re_request_whose_overlap_batch_left_the_buffer_says_so(caplog):
    """Review s13-fixes K1: the same engine's buffer wraps between the two requests (batches 0-249
    evicted, 400-499 published): the re-request's answer begins at 250, after the last batch got (199).
    Dropped as before, but the log no longer says only that the engine restarted. (A gap's bounded fetch:
    since kv14 the open-ended catch-up starts again from 0 instead, test_kv_catch_up_restart.py.)"""
    payloads = [batch(stored_map([1_000 + i], None, [i % 50] * 4)) for i in range(500)]
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        if n == 1 and seq is None:  # the first answer's tail lost; then the buffer moves on
            server.buffer = list(enumerate(payloads))[250:]
            return True
        return n == 1 and seq is not None and seq >= 200

    server = VLLMShapedReplay(payloads[:400], lose=lose)
    try:
        sub = KVEventSubscriber(BlockIndex(), "a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint)
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            assert await sub._fetch(0, 500) is None
        assert server.requests[:2] == [0, 199]
        assert "the last batch got has left the engine's buffer" in caplog.text, caplog.text
        assert "a buffer that wrapped, or an engine that restarted" in caplog.text
    finally:
        server.close()


@pytest.mark.parametrize(
    ("address", "bind"),
    [
        ("tcp://no-port-here", False),  # EINVAL
        ("tcp://192.0.2.1:5557", True),  # EADDRNOTAVAIL (TEST-NET-1: not this host's)
        ("tcp://eth9:5557", True),  # ENODEV (no such interface, nor a host name that resolves)
        ("foo://x:1", False),  # EPROTONOSUPPORT
    ],
)
async def test_an_address_that_can_never_work_fails_add_and_is_not_retried(address, bind):
    """L1: before, ``add`` returned and the subscriber was restarted for ever (a WARNING each time)."""

    async def sleep(delay: float) -> None:
        await asyncio.sleep(0.01)  # (the back-off, shortened)

    mgr = KVEventsManager(BlockIndex(), sleep=sleep, rng=random.Random(0))
    try:
        with pytest.raises(zmq.ZMQError) as err:
            async with asyncio.timeout(2):
                await mgr.add("a", address, bind=bind)
        assert err.value.errno in (zmq.EINVAL, zmq.EADDRNOTAVAIL, errno.ENODEV, zmq.EPROTONOSUPPORT)
        await asyncio.sleep(0.3)
        assert mgr.restarts == 0 and mgr.subscribers["a"].stats.resubscribes == 0
    finally:
        await mgr.close()


async def test_a_restarted_subscriber_is_not_caught_up_before_its_catch_up_ran():
    """L3: before, ``wait_caught_up`` returned at once after a restart (the first start's event)."""
    pub = FakeVLLMPublisher()
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # a replay socket that never answers
    silent.setsockopt(zmq.LINGER, 0)
    replay = f"tcp://127.0.0.1:{silent.bind_to_random_port('tcp://127.0.0.1')}"

    async def sleep(delay: float) -> None:
        await asyncio.sleep(0)

    mgr = KVEventsManager(BlockIndex(), replay_timeout=1.0, sleep=sleep, rng=random.Random(0))
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=replay)
        await sub.wait_caught_up()  # (the first catch-up: no answer in 1 s, skipped)
        await _connected(pub, sub)

        def fail_once() -> None:
            del sub._drain
            raise zmq.ZMQError(zmq.ETERM)

        sub._drain = fail_once  # type: ignore[method-assign]
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        await _until(lambda: sub.stats.resubscribes == 1)
        await asyncio.sleep(0.05)  # the restart's catch-up now waits up to 1 s for the silent socket
        assert sub._task is not None and not sub._task.done()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await sub.wait_caught_up()
        async with asyncio.timeout(5):
            await sub.wait_caught_up()  # (then it ends: skipped)
    finally:
        await mgr.close()
        await pub.close()
        silent.close(0)


@pytest.mark.parametrize(
    "bad",
    [
        {"jitter": 1.5},  # negative delays
        {"jitter": -0.1},
        {"factor": 0.5},  # shrinking
        {"initial": 0.0},
        {"initial": 40.0},  # above the maximum
        {"maximum": float("inf")},
        {"healthy_s": -1.0},
    ],
)
def test_restart_backoff_refuses_settings_that_make_no_back_off(bad):
    """N2: before, ``jitter > 1`` gave negative delays (a restart at once, a log line per loop pass)."""
    with pytest.raises(ValueError):
        RestartBackoff(**bad)
    RestartBackoff()  # (the defaults are fine)


def test_the_silence_limit_follows_a_raised_replay_timeout():
    """I2: a quarter of the replay timeout, at least ``FETCH_SILENCE_S`` (0.25 s, the default timeout's)."""
    sub = KVEventSubscriber(BlockIndex(), "a", "tcp://127.0.0.1:1", replay_timeout=1.0)
    assert sub._silence_s() == 0.25
    sub.replay_timeout = 8.0
    assert sub._silence_s() == 2.0
    sub.replay_timeout = 0.2
    assert sub._silence_s() == 0.25


async def test_a_source_whose_address_can_never_work_fails_its_start_and_stops_cleanly():
    """L1 through ``KVEventSources`` (what ``kvgate serve`` / ``kvgate epp`` and a reload's picker swap
    start): its start raises the address error; its stop then lets the subscription go."""
    from kvgate.datalayer.kvevents import KVEventSources
    from kvgate.datalayer.store import EndpointStore

    store = EndpointStore.from_addresses(["127.0.0.1:18400"])
    mgr = KVEventsManager(BlockIndex(), rng=random.Random(0))
    source = KVEventSources(store, mgr, lambda ep: ("tcp://no-port-here", None))
    try:
        with pytest.raises(zmq.ZMQError):
            async with asyncio.timeout(2):
                await source.start()
        assert mgr.restarts == 0
        await source.stop()
        assert mgr.subscribers == {}
    finally:
        await mgr.close()
