"""What the ``kvgate serve --workers N`` tests share (``test_workers.py``, ``test_workers_tenant_limits.py``,
``test_workers_reload.py``, ``test_workers_start.py``): the supervisor as a real process, waited for until
its ``/readyz`` says every worker is ready, killed at the end; the requests each worker answered, from the
admin's merged metrics; a process's children, from ``/proc``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.backend import free_port

# A supervisor and its workers (three interpreters importing kvgate) start: at load ~14 on 2 cores that
# passed 30 s (test_workers_health.py: one of its tests in each of two runs); the pytest timeout is 120 s.
READY_S = 90.0


async def until_ready(
    port: int, text: str = "(2/2 workers)", what: str = "workers never became ready"
) -> None:
    """``/readyz`` on ``port`` answers 200 with ``text`` in its body (polled for ``READY_S``, else ``what``
    and the last answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_S
    last: tuple[int, str] | str = "no answer"
    async with aiohttp.ClientSession() as s:
        while loop.time() < deadline:
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    last = (r.status, await r.text())
                    if r.status == 200 and text in last[1]:
                        return
            except aiohttp.ClientConnectionError as e:
                last = repr(e)
            await asyncio.sleep(0.05)
    raise AssertionError(f"{what} in {READY_S:g} s; last /readyz: {last}")


@contextlib.asynccontextmanager
async def serve_workers(*args: str, n: int = 2) -> AsyncIterator[tuple[Any, int, int]]:
    """``kvgate serve <args> --workers n`` on free data and admin ports, its output dropped, once all
    ``n`` workers are ready: (process, data port, admin port); killed at the end if still running."""
    port, admin = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", *args, "--port", str(port), "--admin-port", str(admin),
        "--workers", str(n), "--log-level", "WARNING",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await until_ready(admin, f"({n}/{n} workers)")
        yield proc, port, admin
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def answers_per_worker(admin: int, *families: str) -> dict[str, float]:
    """The requests each worker counted (by its ``worker`` label) in the ``families`` of the admin's
    merged ``/metrics`` (their ``_total`` samples summed)."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    per: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in families:
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    per[smp.labels["worker"]] = per.get(smp.labels["worker"], 0) + smp.value
    return per


def children(pid: int, running: bytes | None = None) -> list[int]:
    """The child processes of ``pid`` (their parent pid in ``/proc``), only those whose command line holds
    ``running`` when that is given."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != pid:
                    continue
            if running is not None:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if running not in f.read():
                        continue
            out.append(int(entry))
    return out
