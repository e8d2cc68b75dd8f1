"""``kvgate.bench.procs``: a bench's Ctrl-C (its task cancelled) is never swallowed by a process helper, and
a process being started or stopped when it comes is not left running."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kvgate import lifeline
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


# How long a wait on a child process (its start, its end) may take on a loaded machine (4-10 s before).
WAIT_S = 60.0


async def _pid(path: Path) -> int:
    end = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < end:
        if (pid := _read_pid(path)) is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError("the child never wrote its pid")


async def _exited(p: procs.Proc) -> None:
    """(Not ``proc.wait()``: on Python 3.11 it also waits for the output pipe, which a child may hold.)"""
    end = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < end:
        if p.proc.returncode is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the process did not exit")


async def test_a_process_cancelled_while_it_starts_is_stopped(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c", _SLEEPER, str(pidfile)]
    starter = asyncio.create_task(procs.start("sleeper", cmd, "never printed", wait_s=30))
    pid = await _pid(pidfile)
    starter.cancel()
    await asyncio.wait([starter], timeout=WAIT_S)
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
    await asyncio.wait([starter], timeout=WAIT_S)
    assert starter.done()
    if not starter.cancelled():
        p, _ = starter.result()
        await p.stop()
        pytest.fail("start() returned the process: the cancellation was swallowed")
    assert gone(await _pid(pidfile))


_LEAVES_A_CHILD = (
    "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "open(sys.argv[1], 'w').write(str(c.pid)); print('ready', flush=True)"
)
_IGNORES_SIGTERM = (
    "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "open(sys.argv[1], 'w').write(str(os.getpid())); print('ready', flush=True); time.sleep(60)"
)


async def test_stop_ends_the_children_a_process_left_in_its_group(tmp_path: Path) -> None:
    """The process exits at once, leaving a child (same process group, holding its output open). stop()
    saw it ended and left the child running (and then swallowed the caller's cancellation as it waited
    for the output reader, which the child's open pipe kept alive)."""
    pidfile = tmp_path / "pid"
    p, _ = await procs.start("leaver", [sys.executable, "-c", _LEAVES_A_CHILD, str(pidfile)], "ready")
    child = await _pid(pidfile)
    await _exited(p)
    assert not gone(child)
    await asyncio.wait_for(p.stop(grace=5.0), WAIT_S)
    assert gone(child), "the child the process left in its group still runs"


async def test_stop_cancelled_while_it_waits_still_kills_and_raises(tmp_path: Path) -> None:
    """A process that ignores SIGTERM; the stop is cancelled (Ctrl-C) during its grace. Before: the
    cancel left it running (the SIGKILL after the grace never came)."""
    pidfile = tmp_path / "pid"
    p, _ = await procs.start("deaf", [sys.executable, "-c", _IGNORES_SIGTERM, str(pidfile)], "ready")
    pid = await _pid(pidfile)
    stopper = asyncio.create_task(p.stop(grace=30.0))
    await asyncio.sleep(0.3)
    stopper.cancel()
    await asyncio.wait([stopper], timeout=WAIT_S)
    assert stopper.cancelled()
    end = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < end:
        if gone(pid):
            break
        await asyncio.sleep(0.05)
    assert gone(pid), "the process was left running"
    await p.stop()  # (its transport closed in this loop)


async def test_stop_never_swallows_the_callers_cancellation(tmp_path: Path) -> None:
    """The process ended, its output reader not yet (a child in a session of its own holds the pipe):
    the stop cancelled as it waits for the reader raises the cancellation. (Before,
    ``suppress(CancelledError): await reader`` returned: the caller went on after its Ctrl-C.)"""
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c", _LEAVES_A_CHILD.replace("])", "], start_new_session=True)"), str(pidfile)]
    p, _ = await procs.start("leaver", cmd, "ready")
    child = await _pid(pidfile)
    try:
        await _exited(p)
        stopper = asyncio.create_task(p.stop())
        await asyncio.sleep(0)  # the stop waits for the reader now
        stopper.cancel()
        await asyncio.wait([stopper], timeout=WAIT_S)
        assert stopper.cancelled(), "the stop's cancellation was swallowed"
    finally:
        os.kill(child, 9)
        await p.stop()  # (its transport closed in this loop)


async def test_exit_code_returns_the_status_or_raises_a_runtime_error_past_its_limit(tmp_path: Path) -> None:
    """inference-perf's wait: ``asyncio.wait_for(proc.wait(), limit)`` raised ``TimeoutError`` past the
    bench's ``except RuntimeError`` (a traceback, no error report), and on Python 3.11 it also waited for
    the output pipe (a child may hold it) and could drop a cancel (gh-86296)."""
    p, _ = await procs.start("exits", [sys.executable, "-c", "raise SystemExit(3)"], None)
    try:
        assert await asyncio.wait_for(procs.exit_code(p, 30.0), 30) == 3
    finally:
        await p.stop()
    pidfile = tmp_path / "pid"
    p, _ = await procs.start("sleeper", [sys.executable, "-c", _SLEEPER, str(pidfile)], "ready")
    try:
        with pytest.raises(RuntimeError, match="sleeper: still running after 0 s"):
            await procs.exit_code(p, 0.2)
    finally:
        await p.stop()
    assert gone(await _pid(pidfile))


async def test_stop_closes_the_process_transport(tmp_path: Path) -> None:
    """asyncio closes a subprocess transport only once its output reached its end; stop() cancels the
    reader before that when a child in a session of its own holds the pipe, so the transport was left
    open and closed when collected: after its loop had closed, an error ('Event loop is closed',
    reported by pytest in whichever test ran then)."""
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c", _LEAVES_A_CHILD.replace("])", "], start_new_session=True)"), str(pidfile)]
    p, _ = await procs.start("leaver", cmd, "ready")
    child = await _pid(pidfile)
    try:
        await _exited(p)
        await p.stop()
        transport: Any = p.proc._transport  # type: ignore[attr-defined]
        assert transport.is_closing()
    finally:
        os.kill(child, 9)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_a_cancelled_stop_reaps_the_process_and_closes_its_pipe(tmp_path: Path) -> None:
    """The stop of a process that ignores SIGTERM is cancelled (Ctrl-C) during its grace: by the time the
    cancellation is raised the process was killed **and collected** (its exit status known, no zombie),
    its output pipe closed (no descriptor left open), and the cancellation raised once. (Before, the
    cancel sent SIGKILL and raised at once: the exit status unknown, the transport left open until the
    loop happened to see the pipe's end, the group's orphans never collected.)"""
    before = _fds()
    pidfile = tmp_path / "pid"
    p, _ = await procs.start("deaf", [sys.executable, "-c", _IGNORES_SIGTERM, str(pidfile)], "ready")
    pid = await _pid(pidfile)
    stopper = asyncio.create_task(p.stop(grace=30.0))
    await asyncio.sleep(0.3)
    stopper.cancel()
    await asyncio.wait([stopper], timeout=WAIT_S)
    assert stopper.cancelled(), "the cancellation was not raised"
    assert p.proc.returncode == -9, "the process was not collected when the stop raised"
    assert lifeline.stat(pid) is None, "left a zombie"
    transport: Any = p.proc._transport  # type: ignore[attr-defined]
    assert transport.is_closing(), "its transport (the output pipe) was left open"
    assert _fds() - before == set(), "a descriptor was left open"


# A bench (a child subreaper, as ``reaper.install`` makes it) stops a process whose child (same group)
# ignores SIGTERM too and holds 256 MB of touched memory (an engine process: it takes longer than its leader
# to die, freeing it); its stop is cancelled during the grace, or runs past its grace. Once no process of
# the group runs any more (polled, bounded: a member still dying is not a zombie yet, and one seen too
# early would hide a zombie left), it prints the zombies it is left with.
_SUBREAPER_BENCH = """
import asyncio, os, sys, time
from kvgate import lifeline
from kvgate.bench import procs
lifeline.become_subreaper()
MB, CANCEL = int(sys.argv[1]), sys.argv[2] == "cancel"
code = ("import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        f"signal.signal(signal.SIGTERM, signal.SIG_IGN); b = bytearray(b\\"x\\") * ({MB} << 20); "
        "print(1, flush=True); time.sleep(60)'], "
        "stdout=subprocess.PIPE); c.stdout.readline(); print('ready', flush=True); time.sleep(60)")

async def main():
    p, _ = await procs.start("deaf", [sys.executable, "-c", code], "ready")
    if CANCEL:
        stopper = asyncio.create_task(p.stop(grace=30.0))
        await asyncio.sleep(0.3)
        stopper.cancel()
        await asyncio.wait([stopper], timeout=20)
        assert stopper.cancelled()
    else:
        await p.stop(grace=0.3)
    g, me = p.proc.pid, os.getpid()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(st[1] == g and st[2] != "Z" for st in lifeline.scan().values()):
        time.sleep(0.02)
    zombies = [pid for pid, st in lifeline.scan().items() if st[0] == me and st[2] == "Z"]
    print("zombies", zombies, flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["cancel", "grace"])
def test_a_stop_collects_the_groups_orphans_in_a_subreaper(how: str) -> None:
    """In a bench (a child subreaper) the group's other processes, killed with it, are re-parented to the
    bench: a stop collects them too (``reaper.collect_orphans``), cancelled or past its grace, also a
    member that dies more slowly than its leader (the stop waits, within the grace, until none of the
    group runs; review s15-hard M1, L1)."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", _SUBREAPER_BENCH, "256", how],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "zombies []" in out.stdout, (
        f"a member of the stopped group left a zombie of the bench: {out.stdout}"
    )
