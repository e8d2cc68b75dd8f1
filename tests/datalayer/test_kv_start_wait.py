"""A source's start waits as long as one replay fetch may take, and a fetch is bounded in time (kv14):
before, the start waited the replay timeout plus ``CATCH_UP_APPLY_S`` while one fetch could take up to
``FETCH_MAX_ROUNDS`` timeouts (each request its own), so a catch-up that needed a few re-requests was
still running when the gateway reported ready."""

from __future__ import annotations

import math
import time

from datalayer.test_kv_replay_loss import VLLMShapedReplay
from datalayer.test_kvevents import batch, stored_map
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager, KVEventSources, KVEventSubscriber
from kvgate.datalayer.kvsubscriber import (
    CATCH_UP_APPLY_S,
    FETCH_DEADLINE_TIMEOUTS,
    FETCH_MAX_ROUNDS,
    fetch_deadline_s,
    start_wait_s,
)
from kvgate.datalayer.store import EndpointStore


def _payloads(n: int) -> list[bytes]:
    return [batch(stored_map([1_000 + i], None, [i % 50] * 4)) for i in range(n)]


def test_the_start_wait_covers_a_whole_fetch_and_its_apply():
    assert fetch_deadline_s(1.0) == FETCH_DEADLINE_TIMEOUTS * 1.0 < FETCH_MAX_ROUNDS * 1.0
    assert start_wait_s(1.0) == fetch_deadline_s(1.0) + CATCH_UP_APPLY_S
    assert start_wait_s(0.5) == FETCH_DEADLINE_TIMEOUTS * 0.5 + CATCH_UP_APPLY_S


def test_the_start_wait_fits_the_worker_start_limit_whatever_the_replay_timeout():
    """Review s14-kv L2: sources start inside the gateway worker's start, ``SOURCE_STARTS`` at a time, and
    the supervisor kills a worker not started in ``_START_TIMEOUT_S`` (60 s). Failed before: the wait grew
    with the replay timeout (8 x it + 4 s: 60 s at ``KVGATE_KV_REPLAY_TIMEOUT_S=7``), so one round of slow
    catch-ups had the worker killed; now it is capped, and 32 pools (4 rounds) of them fit."""
    from kvgate.gateway.server import SOURCE_STARTS
    from kvgate.gateway.workers import _START_TIMEOUT_S

    for timeout in (0.5, 1.0, 2.5, 7.0, 60.0):
        rounds = math.ceil(32 / SOURCE_STARTS)
        assert rounds * start_wait_s(timeout) < _START_TIMEOUT_S, f"replay timeout {timeout} s"


async def test_a_source_start_waits_for_a_catch_up_that_needed_re_requests(monkeypatch):
    """Three answers each lose their tail (and end marker) past 100 batches: the fetch asks at least four
    times, each loss found after the silence limit (0.25 s), so the catch-up takes at least 0.75 s
    whatever the load. Failed before: the start waited 0.4 s + 0.2 s (timeout + apply) and returned with
    the index empty; now it waits 8 x 0.4 s + 0.2 s. (Four requests on a quiet machine; under load a
    server thread paused past the silence limit mid-answer costs one more re-request, which the product
    rightly makes: the losses are fixed to the first three requests, so fewer than four cannot fill the
    index, and more still must before the start returns.)"""
    from kvgate.datalayer import kvsubscriber

    monkeypatch.setattr(kvsubscriber, "CATCH_UP_APPLY_S", 0.2)
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        return n <= 3 and (seq is None or seq >= server.requests[n - 1] + 100)

    server = VLLMShapedReplay(_payloads(400), lose=lose)
    store = EndpointStore()
    store.add(Endpoint(address="a"))
    mgr = KVEventsManager(BlockIndex(), replay_timeout=0.4)
    src = KVEventSources(store, mgr, lambda ep: ("tcp://127.0.0.1:1", server.endpoint))
    try:
        await src.start()
        assert mgr.index.engine_hashes("a") == set(range(1_000, 1_400)), server.requests
        assert len(server.requests) >= 4, server.requests
        assert server.requests[0] == 0 and server.requests[1] > 0, server.requests  # (a re-request)
    finally:
        await src.stop()
        await mgr.close()
        server.close()


async def test_a_fetch_that_keeps_progressing_slowly_ends_at_its_deadline(caplog):
    """Each answer comes slowly (0.15 s before its first batch) and loses all but its first four batches:
    every request makes progress, so before only ``FETCH_MAX_ROUNDS`` (16) requests ended it, ~16 x 0.4 s.
    Now the fetch ends at ``FETCH_DEADLINE_TIMEOUTS`` replay timeouts (4 s), with fewer requests.
    (The four batches go in one go, so the only wait that load stretches is the first batch's, and it
    has 0.35 s to spare under the 0.5 s replay timeout; a trickle with a wait before every batch had each
    of ~36 waits race the 0.25 s silence limit.)"""
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        start = server.requests[n - 1]
        if seq is None or seq >= start + 4:
            return True
        if seq == start:
            time.sleep(0.15)  # (on the server's thread)
        return False

    server = VLLMShapedReplay(_payloads(1_000), lose=lose)
    try:
        sub = KVEventSubscriber(
            BlockIndex(), "a", "tcp://127.0.0.1:1", replay_endpoint=server.endpoint, replay_timeout=0.5
        )
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            assert await sub._fetch(0) is None
        # (each request takes at least 0.15 s on the server and the 0.25 s silence: at most 10 fit in 4 s)
        assert len(server.requests) < FETCH_MAX_ROUNDS, server.requests
        assert "the fetch's time ran out (4.0 s: 8 replay timeouts)" in caplog.text, caplog.text
    finally:
        server.close()


async def test_a_round_cut_by_the_fetch_deadline_ends_at_or_after_it():
    """A replay that never answers, and a fetch deadline under 1 ms away (before the request's own 1 s
    timeout): the round must not return before that deadline, or ``_fetch`` reads the fetch as not
    expired and logs the wrong reason (flake3: the poll's wait was cut to whole ms, here to a poll(0)
    that returns at once; seen under load when the last round had < 1 ms left)."""
    import asyncio

    import zmq
    import zmq.asyncio

    from kvgate.datalayer.kvsubscriber import _Kept

    ctx = zmq.asyncio.Context.instance()
    router = ctx.socket(zmq.ROUTER)  # (reads requests, answers none)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        sub = KVEventSubscriber(
            BlockIndex(),
            "a",
            "tcp://127.0.0.1:1",
            replay_endpoint=f"tcp://127.0.0.1:{port}",
            replay_timeout=1.0,
        )
        loop = asyncio.get_running_loop()
        for _ in range(20):
            deadline = loop.time() + 0.0005
            outcome, _, _ = await sub._fetch_round(0, 0, None, _Kept(), None, deadline)
            assert outcome == "silent"
            assert loop.time() >= deadline
    finally:
        router.close()
