"""``kvgate serve --workers 2``: a worker that was killed is not ready on the supervisor's ``/readyz`` (lead's
finding W0, session 21). Real worker processes, real SIGKILL, real HTTP: a worker whose admin port refuses
the connection (or drops it) is gone or going, not busy, so it does not count as its last answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp
import pytest

from gateway import workers_kit


@pytest.mark.timeout(300)  # (a start and two replacements, each within READY_S on a loaded machine)
async def test_a_killed_worker_is_not_ready_until_its_replacement_answers(backends):  # type: ignore[no-untyped-def]
    """With ``--min-ready-workers 2``, each worker in turn is SIGKILLed and ``/readyz`` asked at once, again
    and again: it answers 503 until the slot's new worker exists (and has answered), never 200 from the
    killed worker's last answer. Before: the first answers after the kill were ``ready (2/2 workers)`` with
    ``worker 0 (pid N) busy: no answer in time ... counted as its last answer (ready)``, the refused
    connection taken for a busy loop while the dying process's heartbeat was still fresh."""
    (b,) = await backends(1)
    args = ("--endpoints", b.address, "--model", "m", "--min-ready-workers", "2")
    async with (
        workers_kit.serve_workers(*args) as (proc, _port, admin),
        aiohttp.ClientSession() as s,
    ):
        loop = asyncio.get_running_loop()
        for _ in range(2):  # each slot once
            first = sorted(workers_kit.children(proc.pid, b"spawn_main"))
            victim, other = first[0], first[1]
            os.kill(victim, signal.SIGKILL)
            # (the slot's new worker is a fresh interpreter importing kvgate: as long as a start, READY_S;
            # 30 s before: a start at load ~14 took longer)
            deadline = loop.time() + workers_kit.READY_S
            answers: list[tuple[int, str]] = []
            while True:
                # A 200 is right only once a replacement was running before the question was asked.
                replaced = bool(set(workers_kit.children(proc.pid, b"spawn_main")) - {victim, other})
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                        got = (r.status, await r.text())
                answers.append(got)
                if got[0] == 200:
                    assert replaced, f"ready before the killed worker {victim} was replaced: {answers}"
                    assert f"(pid {victim})" not in got[1], got
                    break
                assert loop.time() < deadline, f"never ready again after the kill: {answers[-3:]}"
                await asyncio.sleep(0.01)
