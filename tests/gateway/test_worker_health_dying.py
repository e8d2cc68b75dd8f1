"""Session-21 closing note: a ``/healthz`` in the milliseconds between a worker's SIGKILL and its exit
counted the process live. Real: a killed process runs on (freeing its memory) until it is a zombie, and
``Process.is_alive`` (``waitpid(WNOHANG)``) says alive until then: 1-70 ms for a process of 0-2 GiB
(measured, load 4: a spawned child of 0, 512 and 2048 MiB touched, SIGKILLed, ``is_alive`` polled until
False). The supervisor's slots now read a pending SIGKILL or an exit begun (/proc) as not live. Real
child processes (the supervisor's spawn context); Linux."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import pytest

from kvgate.gateway import worker_health

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


def _hold(mib: int, ready: Any) -> None:
    """A child with ``mib`` MiB touched (its exit frees them: the window a kill takes), then idle."""
    block = bytearray(mib << 20)
    for at in range(0, len(block), 4096):
        block[at] = 1
    ready.send(True)
    time.sleep(120)


def _until_stopped(pid: int, within_s: float = 30.0) -> None:
    """Poll /proc until ``pid``'s state is ``T`` (stopped)."""
    deadline = time.monotonic() + within_s
    while True:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"T":
                return
        assert time.monotonic() < deadline, f"{pid} not stopped in {within_s} s"
        time.sleep(0.001)


def _supervisor() -> Any:
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway.workers import Supervisor

    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    return Supervisor(parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1"}}), 1)


def test_a_killed_worker_is_not_live_before_it_is_reaped() -> None:
    """The worker killed (SIGKILL) and ``/healthz``'s slots read at once: not live, 503 ``no live
    worker`` (FAILED before: alive, ``ok (1/1 workers)``, until its 64 MiB were freed)."""
    sup = _supervisor()
    recv, send = sup.ctx.Pipe(duplex=False)
    proc = sup.ctx.Process(target=_hold, args=(64, send), name="kvgate-test-held")
    proc.start()
    try:
        assert recv.poll(60) and recv.recv()
        sup.procs[0] = proc
        sup.admin_ports[0] = 1  # (reported its start)
        sup.heartbeat[0] = sup.reported_at[0] = time.monotonic()
        assert sup.slots()[0].alive
        assert worker_health.healthz(sup.slots(), 10.0)[0] == 200
        os.kill(proc.pid, signal.SIGKILL)
        slots = sup.slots()
        assert not slots[0].alive, "a killed worker read as live"
        status, text = worker_health.healthz(slots, 10.0)
        assert status == 503 and text.startswith("no live worker"), text
    finally:
        proc.kill()
        proc.join(30)
        recv.close()
        send.close()
    assert not sup.slots()[0].alive  # (reaped: as before)


def test_a_stopped_worker_is_not_dying() -> None:
    """A stopped process (SIGSTOP: a debugger, ``docker pause``) is wedged, not dying: it still counts
    live (review s21-wrk M1); only a kill or an exit makes it not."""
    sup = _supervisor()
    recv, send = sup.ctx.Pipe(duplex=False)
    proc = sup.ctx.Process(target=_hold, args=(1, send), name="kvgate-test-stopped")
    proc.start()
    try:
        assert recv.poll(60) and recv.recv()
        os.kill(proc.pid, signal.SIGSTOP)
        _until_stopped(proc.pid)  # (a SIGSTOP still pending is a running process: review s22-gw F6)
        sup.procs[0] = proc
        assert sup.slots()[0].alive
    finally:
        proc.kill()
        proc.join(30)
        recv.close()
        send.close()
