"""Review s10-hard's findings on ``kvgate.bench.reaper`` / ``kvgate.bench.procs`` (each test failed before
its fix): a stopped process group whose leader's pid was reused is not signalled (M2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import types

from kvgate.bench import procs


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_proc_stop_does_not_signal_a_group_that_reused_the_exited_leaders_pid() -> None:
    """M2: a ``Proc`` whose process exited and was collected (returncode set) while its pid now leads
    someone else's session: ``stop()`` must send that group nothing (before: SIGTERM, rc -15)."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)  # someone else's, now at that pid
    try:
        gone = types.SimpleNamespace(pid=other.pid, returncode=0)  # ours, exited and collected
        asyncio.run(procs.Proc("crashed-server", gone).stop(grace=0.2))  # type: ignore[arg-type]
        assert other.poll() is None, f"an unrelated process group was killed (rc {other.returncode})"
    finally:
        _kill(other.pid)
        other.wait()


def test_proc_stop_does_not_signal_a_reused_pid_whose_start_time_differs() -> None:
    """M2: the leader's start time is recorded at start; a running-looking pid with another start time
    (the exit not yet seen by asyncio, the pid reused) is not ours either."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        not_ours = types.SimpleNamespace(pid=other.pid, returncode=None)
        p = procs.Proc("crashed-server", not_ours, start_time=1)  # type: ignore[arg-type]
        asyncio.run(p.stop(grace=0.2))
        assert other.poll() is None, f"an unrelated process group was killed (rc {other.returncode})"
    finally:
        _kill(other.pid)
        other.wait()
