"""``kvgate.bench.procs``: a bench's Ctrl-C (its task cancelled) is never swallowed by a process helper, and
a process being started or stopped when it comes is not left running."""

from __future__ import annotations

import asyncio
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kvgate.bench import procs

_SLEEPER = (
    "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); print('ready', flush=True); "
    "time.sleep(60)"
)


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead; reaped by whoever is its parent now)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _read_pid(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None


async def _pid(path: Path) -> int:
    for _ in range(200):
        if (pid := _read_pid(path)) is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError("the child never wrote its pid")


async def test_a_process_cancelled_while_it_starts_is_stopped(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c", _SLEEPER, str(pidfile)]
    starter = asyncio.create_task(procs.start("sleeper", cmd, "never printed", wait_s=30))
    pid = await _pid(pidfile)
    starter.cancel()
    await asyncio.wait([starter], timeout=10)
    assert starter.cancelled()
    assert gone(pid), "the process being started was left running"


async def test_a_cancel_landing_as_the_ready_line_arrives_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ready line and the bench's Ctrl-C in the same event-loop turn (the pattern's match cancels the
    starting task, just before the reader wakes it): ``start`` must raise the cancellation and stop the
    process. (Before, Python 3.11's ``asyncio.wait_for(found.wait(), ...)`` returned the process: the
    bench went on after its Ctrl-C, CPython gh-86296.)"""
    starter: asyncio.Task[Any] | None = None

    class _CancelOnMatch:
        def __init__(self, pattern: str) -> None:
            self.real = re.compile(pattern)

        def search(self, line: str) -> re.Match[str] | None:
            m = self.real.search(line)
            if m is not None and starter is not None:
                starter.cancel()
            return m

    monkeypatch.setattr(procs, "re", types.SimpleNamespace(compile=_CancelOnMatch, Match=re.Match))
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c", _SLEEPER, str(pidfile)]
    starter = asyncio.create_task(procs.start("sleeper", cmd, "ready", wait_s=30))
    await asyncio.wait([starter], timeout=10)
    assert starter.done()
    if not starter.cancelled():
        p, _ = starter.result()
        await p.stop()
        pytest.fail("start() returned the process: the cancellation was swallowed")
    assert gone(await _pid(pidfile))
