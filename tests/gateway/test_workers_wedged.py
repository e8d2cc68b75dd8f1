"""``kvgate serve --workers 2`` with one worker wedged (review s20-qa M2; SIGSTOP stands for an event loop
blocked by a bug or a long synchronous call, a debugger, a frozen cgroup): the kernel keeps giving it its
share of new connections (``SO_REUSEPORT``), which hang. The supervisor kills (SIGKILL) and restarts a
worker whose heartbeat is older than ``listen.workerTimeoutSeconds`` (``--worker-timeout``), and its
``/readyz`` asks each worker for at most ``_READYZ_FETCH_TIMEOUT_S`` (a kubelet probe's timeout is 1 s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import aiohttp
import orjson
import pytest

from gateway import workers_kit
from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.gateway.cli import main as serve_main


async def _one(port: int) -> int:
    """One completion on a new connection; 0 when it hangs 10 s (a wedged worker holds it; an answer takes
    milliseconds, a second or two at load ~10)."""
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    url = f"http://127.0.0.1:{port}/v1/completions"
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            asyncio.timeout(10.0),
            s.post(url, data=body) as r,
        ):
            await r.read()
            return r.status
    except TimeoutError:
        return 0


async def _readyz(admin: int) -> tuple[float, int, str]:
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/readyz") as r:
        text = await r.text()
    return time.monotonic() - t0, r.status, text


async def test_a_wedged_worker_is_killed_and_restarted(backends):
    (b,) = await backends(1)
    args = ("--endpoints", b.address, "--model", "m", "--worker-timeout", "2")
    async with workers_kit.serve_workers(*args, n=2) as (proc, port, admin):
        workers = workers_kit.children(proc.pid, b"spawn_main")
        assert len(workers) == 2, workers
        wedged = workers[0]
        os.kill(wedged, signal.SIGSTOP)
        try:
            # While it is wedged: /readyz does not wait on it (before: ~5 s, the admin fetch's timeout; now
            # ~0.5 s, up to seconds more at load ~10); until its heartbeat is past the bound it is busy,
            # counted as its last answer (test_workers_health).
            took, status, text = await _readyz(admin)
            assert took < 4.0, f"/readyz took {took:.1f} s with a worker wedged ({status} {text!r})"
            assert status == 200, (status, text)
            assert "(1/2 workers)" in text or f"(pid {wedged}) busy" in text, text
            # Killed past the bound (2 s, checked every 0.2 s), restarted, ready again.
            for _ in range(900):  # (90 s: a fresh interpreter on a loaded machine; 30 s before)
                now = workers_kit.children(proc.pid, b"spawn_main")
                if wedged not in now and len(now) == 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the wedged worker {wedged} was never replaced: {now}")
            await workers_kit.until_ready(admin, "(2/2 workers)", "the restarted worker never became ready")
            statuses = [await _one(port) for _ in range(10)]  # one new connection each
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(wedged, signal.SIGCONT)
    assert statuses == [200] * 10, f"after the wedged worker's restart, new connections: {statuses} (0: hung)"


@pytest.mark.parametrize("value", [-1, 1, 1.9, 3601, "10"])
def test_worker_timeout_key_is_checked(value):
    with pytest.raises(GatewayConfigError, match=r"listen\.workerTimeoutSeconds"):
        parse_gateway_config(
            {"pools": [{"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}],
             "listen": {"workerTimeoutSeconds": value}}
        )  # fmt: skip


def test_worker_timeout_key_default_and_zero():
    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    assert parse_gateway_config({"pools": [pool]}).worker_timeout_s == 10.0
    off = parse_gateway_config({"pools": [pool], "listen": {"workerTimeoutSeconds": 0}})
    assert off.worker_timeout_s == 0.0


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--workers", "2", "--worker-timeout", "1"], "--worker-timeout: must be 0 (never) or in 2..3600"),
        (["--worker-timeout", "30"], "--worker-timeout: only with --workers above 1"),
    ],
)
def test_worker_timeout_flag_is_checked(extra, says, capsys):
    assert serve_main(["--endpoints", "127.0.0.1:9", "--model", "m", *extra]) == 2
    assert says in capsys.readouterr().err


async def test_a_frozen_then_thawed_gateway_keeps_its_workers(backends) -> None:  # type: ignore[no-untyped-def]
    """The whole tree frozen and thawed (docker pause / unpause, Ctrl-Z then fg, a cgroup freezer) for longer
    than the bound: no worker was wedged, so none is killed; the supervisor's watch, standing still too,
    counts heartbeat ages from its own thaw (review s20-fixes-b M2: at its first tick after the thaw it
    found every heartbeat as old as the freeze and SIGKILLed healthy workers with their streams)."""
    (b,) = await backends(1)
    args = ("--endpoints", b.address, "--model", "m", "--worker-timeout", "2")
    async with workers_kit.serve_workers(*args, n=2) as (proc, _port, _admin):
        workers = sorted(workers_kit.children(proc.pid, b"spawn_main"))
        assert len(workers) == 2, workers
        tree = [proc.pid, *workers]
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(3.5)  # (longer than the bound)
        for pid in tree:  # (thawed together: the supervisor's tick and the workers' beats race)
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(2.0)
        after = sorted(workers_kit.children(proc.pid, b"spawn_main"))
    assert after == workers, f"workers {workers} after a 3.5 s freeze of the whole gateway: {after} (killed)"
