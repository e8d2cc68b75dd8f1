"""A bind address's host name that does not resolve *for now* (a DNS server not answering yet, e.g. at pod
start) is retried with the subscriber's restart back-off, logged and counted (kv14); a name that does not
resolve (NXDOMAIN) still fails the first start, as an address that can never work. Before, libzmq looked
the name up inside ``bind`` (blocking the event loop for as long as the DNS server took) and answered any
failure with ENODEV, which failed ``add`` and with it the gateway's start."""

from __future__ import annotations

import asyncio
import errno
import random
import socket

import pytest
import zmq
import zmq.asyncio
from prometheus_client import REGISTRY

from datalayer.test_kvevents import batch, stored_map
from kvgate.datalayer import kvsubscriber
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager

# RFC 2606: never resolves in real DNS, so only the test's lookup can give it an address.
HOST = "kvgate-gateway.invalid"


async def _short(delay: float) -> None:
    await asyncio.sleep(0.01)  # (the restart back-off, shortened)


def _lookups(answers: list[BaseException | str]):
    """A stand-in for the DNS lookup: each call gives the next answer (an exception is raised)."""
    calls: list[str] = []

    async def lookup(host: str) -> str:
        calls.append(host)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return lookup, calls


async def test_a_bind_host_name_that_fails_to_resolve_for_now_is_retried_after_the_back_off(
    monkeypatch, caplog
):
    """The first lookup fails temporarily (EAI_AGAIN), the second gives 127.0.0.1. Failed before:
    ``add`` raised ENODEV (libzmq's own lookup of the name failed). Now ``add`` returns, the failure is
    logged and counted, the restart binds, and a connecting publisher's batches reach the index."""
    lookup, calls = _lookups([socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
                              "127.0.0.1"])  # fmt: skip
    monkeypatch.setattr(kvsubscriber, "lookup_ipv4", lookup, raising=False)
    name = "kvgate_kv_events_resolve_failures_total"
    before = REGISTRY.get_sample_value(name) or 0.0
    idx = BlockIndex()
    mgr = KVEventsManager(idx, sleep=_short, rng=random.Random(0))
    pub = zmq.asyncio.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        with caplog.at_level("WARNING", logger="kvgate.datalayer.kvsubscriber"):
            sub = await mgr.add("a", f"tcp://{HOST}:*", bind=True)  # (a random port: read back below)
            for _ in range(500):
                if sub._sock is not None:
                    break
                await asyncio.sleep(0.01)
        assert sub._sock is not None, "never bound"
        assert calls == [HOST, HOST] and sub.stats.resolve_failures == 1 and mgr.restarts == 1
        assert REGISTRY.get_sample_value(name) == before + 1
        assert f"its host name '{HOST}' did not resolve for now" in caplog.text, caplog.text
        bound = sub._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        assert bound.startswith("tcp://127.0.0.1:"), bound
        pub.connect(bound)
        for i in range(500):
            await pub.send_multipart([b"", i.to_bytes(8, "big"), batch(stored_map([i + 1], None, [0] * 4))])
            await asyncio.sleep(0.01)
            if idx.num_blocks("a"):
                break
        assert idx.num_blocks("a") >= 1
    finally:
        pub.close(0)
        await mgr.close()


async def test_a_bind_host_name_lookup_that_does_not_answer_in_time_is_retried(monkeypatch):
    """A DNS server that does not answer: the lookup is given up after ``RESOLVE_TIMEOUT_S`` (the event
    loop kept serving meanwhile), and ``add`` returns within its 5 s wait instead of timing out."""

    async def hang(host: str) -> str:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    monkeypatch.setattr(kvsubscriber, "lookup_ipv4", hang, raising=False)
    monkeypatch.setattr(kvsubscriber, "RESOLVE_TIMEOUT_S", 0.2, raising=False)
    backoff_started = asyncio.Event()

    async def sleep(delay: float) -> None:
        backoff_started.set()
        await asyncio.sleep(3600)  # (no restart in this test)

    mgr = KVEventsManager(BlockIndex(), sleep=sleep, rng=random.Random(0))
    try:
        async with asyncio.timeout(2):
            sub = await mgr.add("a", f"tcp://{HOST}:5557", bind=True)
            await backoff_started.wait()
        assert sub.stats.resolve_failures == 1 and sub.start_error is None
    finally:
        await mgr.close()


@pytest.mark.parametrize("code", [socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)])
async def test_a_bind_host_name_that_does_not_resolve_still_fails_the_start(monkeypatch, code):
    """NXDOMAIN (or no address) is not a passing state: ``add`` raises ENODEV as before, no restart."""
    lookup, calls = _lookups([socket.gaierror(code, "Name or service not known")])
    monkeypatch.setattr(kvsubscriber, "lookup_ipv4", lookup, raising=False)
    mgr = KVEventsManager(BlockIndex(), sleep=_short, rng=random.Random(0))
    try:
        with pytest.raises(zmq.ZMQError) as err:
            async with asyncio.timeout(2):
                await mgr.add("a", f"tcp://{HOST}:5557", bind=True)
        assert err.value.errno == errno.ENODEV and calls == [HOST]
        await asyncio.sleep(0.1)
        assert mgr.restarts == 0
    finally:
        await mgr.close()


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "tcp://*:0", "tcp://lo:0"])
async def test_ip_addresses_wildcards_and_interface_names_are_not_looked_up(monkeypatch, address):
    """Only host names go to DNS; what ZMQ resolves without it is left to ZMQ."""
    lookup, calls = _lookups([AssertionError("looked up")])
    monkeypatch.setattr(kvsubscriber, "lookup_ipv4", lookup, raising=False)
    mgr = KVEventsManager(BlockIndex())
    try:
        sub = await mgr.add("a", address, bind=True)
        assert sub.start_error is None and calls == []
    finally:
        await mgr.close()


async def test_a_lookup_failing_with_a_plain_os_error_is_retried(monkeypatch):
    """EAI_SYSTEM reaches Python as the plain OSError behind it (EMFILE with the descriptors exhausted),
    not a gaierror: a passing state, retried after the back-off (final read s14-read-a L1). Before, it
    escaped the subscriber's start: ``add`` returned, nothing restarted it, its events stopped for good."""
    lookup, calls = _lookups([OSError(errno.EMFILE, "Too many open files"), "127.0.0.1"])
    monkeypatch.setattr(kvsubscriber, "lookup_ipv4", lookup, raising=False)
    mgr = KVEventsManager(BlockIndex(), sleep=_short, rng=random.Random(0))
    try:
        sub = await mgr.add("a", f"tcp://{HOST}:0", bind=True)
        for _ in range(500):
            if sub._sock is not None:
                break
            await asyncio.sleep(0.01)
        assert sub._sock is not None, "never bound"
        assert calls == [HOST, HOST] and sub.stats.resolve_failures == 1 and mgr.restarts == 1
    finally:
        await mgr.close()


async def test_a_malformed_host_name_still_fails_the_start(monkeypatch):
    """A name with an empty label makes the lookup raise UnicodeError ('label empty or too long'): a
    configuration error, ``add`` raises ENODEV as libzmq's own lookup did before kv14 (final read s14-read-a
    L1: it returned, and the subscriber was dead with no message)."""
    lookup, calls = _lookups([UnicodeError("encoding with 'idna' codec failed (label empty or too long)")])
    monkeypatch.setattr(kvsubscriber, "lookup_ipv4", lookup, raising=False)
    mgr = KVEventsManager(BlockIndex(), sleep=_short, rng=random.Random(0))
    try:
        with pytest.raises(zmq.ZMQError) as err:
            async with asyncio.timeout(2):
                await mgr.add("a", "tcp://kvgate..svc:5557", bind=True)
        assert err.value.errno == errno.ENODEV and calls == ["kvgate..svc"]
        await asyncio.sleep(0.1)
        assert mgr.restarts == 0
    finally:
        await mgr.close()
