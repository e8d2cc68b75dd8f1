"""A bind host name's lookup given up after ``RESOLVE_TIMEOUT_S`` keeps its thread in ``getaddrinfo`` (a
thread cannot be cancelled) for the resolver's whole time-out: tens of seconds against a DNS server that
does not answer (glibc ``timeout:5 attempts:2``, Kubernetes' ``ndots:5`` search domains). Review s14-kv
(M1, M2, L1): on the loop's default executor, (M1) ``asyncio.run``'s and the interpreter's shutdown waited
for it, (M2) each retry after the back-off started another, until the executor (and every other
``getaddrinfo`` of the process queued on it) was full, and (L1) a subscriber cancelled during the lookup
left the source's start waiting its whole wait. Now the lookup runs on a daemon thread of its own, one at
a time per subscriber (a retry waits on the one still running), and the task's end marks it caught up.

``socket.getaddrinfo`` is replaced here by one that blocks on the calling thread, as the real one does;
the last test uses the real C library against a DNS server that never answers (root and ``unshare``).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq

from kvgate.datalayer import kvsubscriber
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager, KVEventSources
from kvgate.datalayer.kvsubscriber import RestartBackoff
from kvgate.datalayer.store import EndpointStore

HOST = "kvgate-hang.invalid"  # (RFC 2606: only the tests' stand-ins answer it)
SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def _child(code: str, timeout: float = 60) -> tuple[float, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(SRC), env.get("PYTHONPATH", "")])
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return time.monotonic() - t, out.stdout.strip()


def test_a_stop_during_a_hanging_bind_lookup_does_not_hold_the_process_shutdown():
    """``add`` returns after the 0.2 s resolve limit, the manager is closed, ``main`` returns; the lookup's
    thread is still in getaddrinfo (20 s). Failed before: ``asyncio.run`` joined the default executor and
    returned only when the lookup did (~20 s)."""
    code = textwrap.dedent(f"""
        import asyncio, socket, time
        real = socket.getaddrinfo
        def hanging(host, *a, **k):
            if host == {HOST!r}:
                time.sleep(20)  # a DNS server that does not answer
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            return real(host, *a, **k)
        socket.getaddrinfo = hanging
        from kvgate.datalayer import kvsubscriber
        kvsubscriber.RESOLVE_TIMEOUT_S = 0.2
        from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager
        async def main():
            mgr = KVEventsManager(BlockIndex())
            sub = await mgr.add("a", "tcp://{HOST}:5557", bind=True)
            assert sub.stats.resolve_failures == 1, sub.stats
            await mgr.close()
        t = time.monotonic()
        asyncio.run(main())
        print("asyncio.run returned after %.1f s" % (time.monotonic() - t), flush=True)
    """)
    _, out = _child(code)
    # (asyncio.run's own time, as the child measured it: not its imports, seconds on a loaded machine; the
    # hung lookup 20 s)
    took = float(out.rsplit("after ", 1)[1].split()[0])
    assert took < 12, f"the shutdown waited for the abandoned lookup: {took:.1f} s; {out}"


async def test_abandoned_bind_lookups_neither_pile_up_nor_fill_the_default_executor(monkeypatch):
    """The DNS server does not answer; each lookup is given up after 0.05 s and retried after a 10 ms
    back-off. Failed before: every retry started another lookup (one hung thread each), and once more were
    abandoned than the default executor has threads, another getaddrinfo of the process (of a literal
    address, answered at once by the C library) queued behind them (TimeoutError). Now one lookup is in
    flight, and the retries wait on it."""
    release = threading.Event()
    real = socket.getaddrinfo
    calls: list[str] = []

    def hanging(host, *a, **k):
        if host == HOST:
            calls.append(host)
            release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(kvsubscriber, "RESOLVE_TIMEOUT_S", 0.05)
    workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default max_workers

    async def short(delay: float) -> None:
        await asyncio.sleep(0.01)

    mgr = KVEventsManager(BlockIndex(), sleep=short, backoff=RestartBackoff(initial=0.01, maximum=0.01))
    try:
        sub = await mgr.add("a", f"tcp://{HOST}:5557", bind=True)
        for _ in range(3000):
            if sub.stats.resolve_failures >= workers + 2:
                break
            await asyncio.sleep(0.02)
        assert sub.stats.resolve_failures >= workers + 2, sub.stats
        assert calls == [HOST], f"{len(calls)} lookups started for one name"
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(3):
            infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        assert infos
    finally:
        release.set()
        await mgr.close()


async def test_a_lookup_that_answers_late_is_what_the_next_start_binds(monkeypatch):
    """The first lookup is given up (0.2 s) but answers a little later: the restart takes that answer
    (one lookup in all) and binds it."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def late(host, *a, **k):
        if host == HOST:
            calls.append(host)
            time.sleep(0.4)
            return real("127.0.0.1", *a, **k)
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", late)
    monkeypatch.setattr(kvsubscriber, "RESOLVE_TIMEOUT_S", 0.2)

    async def short(delay: float) -> None:
        await asyncio.sleep(0.3)

    mgr = KVEventsManager(BlockIndex(), sleep=short)
    try:
        sub = await mgr.add("a", f"tcp://{HOST}:*", bind=True)
        for _ in range(500):
            if sub._sock is not None:
                break
            await asyncio.sleep(0.02)
        assert sub._sock is not None, "never bound"
        assert sub.stats.resolve_failures == 1 and calls == [HOST]
        assert sub._sock.getsockopt(zmq.LAST_ENDPOINT).decode().startswith("tcp://127.0.0.1:")
    finally:
        await mgr.close()


async def test_a_subscriber_dropped_during_its_bind_lookup_does_not_hold_the_source_start(monkeypatch):
    """(L1) Its endpoint removed from the store during the lookup (``_on_change`` -> ``drop``, the task
    cancelled): failed before, ``add`` returned it (ready) but it was never marked caught up, and the start
    waited its whole wait (12 s here)."""
    looking_up = asyncio.Event()

    async def slow(host: str) -> str:  # a DNS server that takes its time
        looking_up.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    monkeypatch.setattr(kvsubscriber, "lookup_ipv4", slow)
    monkeypatch.setattr(kvsubscriber, "RESOLVE_TIMEOUT_S", 3600.0)
    store = EndpointStore()
    store.add(Endpoint(address="a"))
    mgr = KVEventsManager(BlockIndex(), replay_timeout=2.0)  # start wait: 12 s (capped)
    src = KVEventSources(store, mgr, lambda ep: (f"tcp://{HOST}:5557", "tcp://127.0.0.1:1"), bind=True)
    start = asyncio.create_task(src.start())
    try:
        async with asyncio.timeout(10):
            await looking_up.wait()
        store.remove("a")  # the pod went away while the gateway started: its subscriber is dropped
        async with asyncio.timeout(5):
            await start
    finally:
        start.cancel()
        await src.stop()
        await mgr.close()


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare -m (a private /etc/resolv.conf)")
def test_a_real_hung_dns_lookup_does_not_hold_a_uvloop_shutdown(tmp_path):
    """The real C library against a DNS server that never answers (a UDP sink; the resolv.conf is bind-
    mounted in a private mount namespace, the machine's is untouched), under uvloop as the gateway runs.
    Failed before (review s14-kv M1, measured 8.1 s at ``timeout:4 attempts:2``): ``uvloop.run`` returned
    only when the lookup gave up (libuv's pool)."""
    server = f"127.9.{random.randrange(256)}.{random.randrange(1, 255)}"  # (runs side by side do not clash)
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {server}\noptions timeout:5 attempts:2\n")  # a 10 s lookup
    code = textwrap.dedent(f"""
        import asyncio, socket, time
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(({server!r}, 53))  # a DNS server that never answers
        import uvloop
        from kvgate.datalayer import kvsubscriber
        kvsubscriber.RESOLVE_TIMEOUT_S = 0.5
        from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager
        async def main():
            mgr = KVEventsManager(BlockIndex())
            sub = await mgr.add("a", "tcp://kvgate-hang-uv.example:5557", bind=True)
            assert sub.stats.resolve_failures == 1, sub.stats
            await mgr.close()
        t = time.monotonic()
        uvloop.run(main())
        print("%.1f" % (time.monotonic() - t), flush=True)
    """)
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(SRC), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'mount --bind "{conf}" /etc/resolv.conf && exec "$0" -c "$1"',
         sys.executable, code],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    took = float(out.stdout.strip().splitlines()[-1])
    assert took < 5, f"uvloop.run waited {took:.1f} s for the abandoned lookup (the resolver's 10 s)"
