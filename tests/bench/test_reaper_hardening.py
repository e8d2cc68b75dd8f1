"""Review s10-hard's findings on ``kvgate.bench.reaper`` / ``kvgate.bench.procs`` (each test failed before
its fix): a stopped process group whose leader's pid was reused is not signalled (M2); an in-process
``kvgate.bench.cli.main`` installs no process-wide handlers, the command line still does (L1); the
orphaned children of a group leader that already exited are still found and reaped (M1); an unreadable
``/proc`` does not make a running group "gone" (L3); a Ctrl-C during the grace does not skip the
SIGKILL (L4); a process started during the grace is killed too (L2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kvgate import lifeline
from kvgate.bench import procs, reaper

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


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


def test_bench_cli_main_in_process_leaves_no_process_wide_handlers() -> None:
    """L1: ``kvgate.bench.cli.main`` is called in-process (tests, ``DELEGATED`` users): it must not
    install the reaper into its caller (SIGTERM / SIGHUP handlers, an atexit reap of all the caller's
    descendants). A fresh interpreter, so this test's process is not touched."""
    code = (
        "import signal, sys\n"
        "from kvgate.bench import cli\n"
        "cli.main(['list'])\n"
        "sys.exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV, timeout=60)
    assert r.returncode == 0, "cli.main left the reaper's SIGTERM handler installed in its caller"


def test_the_kvgate_command_line_still_installs_the_reaper_for_bench_and_demo() -> None:
    """L1: the console script (``kvgate.cli.main()`` with ``sys.argv``) installs it for ``bench`` and
    ``demo``, not for the other commands or an in-process ``kvgate.cli.main([...])``."""
    code = (
        "import signal, sys\n"
        "from kvgate import cli\n"
        "import kvgate.bench.cli as bc, kvgate.bench.demo as demo\n"
        "seen = []\n"
        "def main(argv):\n"
        "    seen.append(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n"
        "    return 0\n"
        "bc.main = demo.main = main\n"
        "cli.main(['bench', 'list'])\n"
        "sys.argv = ['kvgate', 'bench', 'list']\n"
        "cli.main()\n"
        "print(seen)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=ENV, text=True, timeout=60)
    assert r.stdout.strip() == "[False, True]", r.stdout + r.stderr


_ORPHAN = """
import os, subprocess, sys
from kvgate import lifeline
from kvgate.bench import reaper
reaper.install()
sh = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True,
                      stderr=subprocess.DEVNULL, start_new_session=True)
orphan = int(sh.stdout.readline())
sh.wait()  # (asyncio's child watcher collects a bench's exited child at once, as here)
found = orphan in reaper.descendants()
st = lifeline.stat(orphan)
reaper.reap(grace_s=0.5)
print(orphan, found, bool(st and lifeline.alive({orphan: st[3]})))
"""


def test_reaper_finds_the_children_of_a_group_leader_that_already_exited() -> None:
    """M1: a ``procs.start``-style child (a session of its own) that crashed and was collected, leaving
    its own child (vLLM's engine workers, a server's worker) running in its group: the installed reaper
    still finds it (the bench is their subreaper) and reaps it. A fresh interpreter (it installs)."""
    r = subprocess.run([sys.executable, "-c", _ORPHAN], capture_output=True, env=ENV, text=True, timeout=60)
    out = r.stdout.split()
    assert len(out) == 3, r.stdout + r.stderr
    orphan = int(out[0])
    try:
        assert out[1:] == ["True", "False"], f"found, alive after reap: {out[1:]}"
    finally:
        _kill(orphan)


def _sleeper(*args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n" + "".join(args) + "print('r', flush=True)\ntime.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert p.stdout is not None and p.stdout.readline() == "r\n"
    return p


def test_group_alive_when_proc_cannot_be_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """L3: ``killpg(pgid, 0)`` says the group exists but ``/proc`` cannot be listed: it is running (before:
    an empty scan answered "gone", and ``Proc.stop`` skipped the SIGKILL)."""
    p = _sleeper()
    try:

        def no_proc(path: str) -> list[str]:
            raise PermissionError(path)

        monkeypatch.setattr(reaper.os, "listdir", no_proc)
        assert reaper.group_alive(p.pid)
    finally:
        _kill(p.pid)
        p.wait()


def test_a_ctrl_c_during_the_grace_still_sigkills(monkeypatch: pytest.MonkeyPatch) -> None:
    """L4: a ``KeyboardInterrupt`` out of the grace's sleep: what ignores SIGTERM is still SIGKILLed."""
    p = _sleeper("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n")
    try:
        st = lifeline.stat(p.pid)
        assert st is not None

        calls = []
        real_alive = lifeline.alive

        def ctrl_c_in_the_grace(procs: dict[int, int]) -> dict[int, int]:
            calls.append(1)
            if len(calls) == 2:  # (the grace's first check)
                raise KeyboardInterrupt
            return real_alive(procs)

        monkeypatch.setattr(lifeline, "alive", ctrl_c_in_the_grace)  # (terminate's, kvgate.lifeline)
        with pytest.raises(KeyboardInterrupt):
            lifeline.terminate({p.pid: st[3]}, grace_s=30)
        assert p.wait(60) == -signal.SIGKILL
    finally:
        _kill(p.pid)
        p.wait()


def test_sigint_is_ignored_while_reaping(monkeypatch: pytest.MonkeyPatch) -> None:
    """L4: a second Ctrl-C while the reap waits its grace does not interrupt it (restored after)."""
    seen = []
    monkeypatch.setattr(reaper, "descendants", lambda root=None: {2**22 + 1: 1})
    monkeypatch.setattr(
        lifeline, "terminate", lambda *a, **k: seen.append(signal.getsignal(signal.SIGINT)) or {}
    )
    before = signal.getsignal(signal.SIGINT)
    reaper.reap()
    assert seen == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is before


_LATE = r"""
import subprocess, sys, time
from pathlib import Path
from kvgate import lifeline
from kvgate.bench import reaper
out = Path(sys.argv[1])
sh = subprocess.Popen(["sh", "-c", 'trap "sleep 60 & echo \\$! > %s; exit 0" TERM; echo ready; '
                       'while :; do sleep 0.1; done' % out], stdout=subprocess.PIPE, text=True,
                      stderr=subprocess.DEVNULL, start_new_session=True)
assert sh.stdout.readline() == "ready\n"
# (its trap exits once it started the late one: the grace ends then, and a loaded machine has 30 s to run
# the trap; a 1 s grace SIGKILLed sh first when it was not scheduled in time: no late one, no figure)
reaper.reap(grace_s=30.0)
late = int(out.read_text())
st = lifeline.stat(late)
deadline = time.monotonic() + 5
while st and lifeline.alive({late: st[3]}) and time.monotonic() < deadline:
    time.sleep(0.05)
print(late, bool(st and lifeline.alive({late: st[3]})))
"""


def test_a_process_started_during_the_grace_is_killed(tmp_path: Path) -> None:
    """L2: a supervisor that starts a new process when it gets SIGTERM (one that the reap's first scan
    could not see): it is SIGKILLed at the end of the grace too (before: left running)."""
    r = subprocess.run(
        [sys.executable, "-c", _LATE, str(tmp_path / "late")],
        capture_output=True,
        env=ENV,
        text=True,
        timeout=60,
    )
    out = r.stdout.split()
    assert len(out) == 2, r.stdout + r.stderr
    try:
        assert out[1] == "False", "the process started during the grace was left running"
    finally:
        _kill(int(out[0]))


_ZOMBIES = r"""
import asyncio, sys
from kvgate import lifeline
from kvgate.bench import procs, reaper
reaper.install()

async def main():
    p, m = await procs.start("crashes", ["sh", "-c", "sleep 60 & echo ready $!"], r"ready (\d+)")
    orphan = int(m[0].group(1))
    while p.proc.returncode is None:  # (it exits at once: its worker is left, ours now)
        await asyncio.sleep(0.02)
    await p.stop(grace=2)
    print(orphan, lifeline.stat(orphan))

asyncio.run(main())
"""


def test_proc_stop_collects_the_orphans_it_killed() -> None:
    """M1's subreaper: the workers of a server that exited are re-parented to the bench; once
    ``Proc.stop`` killed them they are collected, not left as zombies of the bench until it exits."""
    r = subprocess.run([sys.executable, "-c", _ZOMBIES], capture_output=True, env=ENV, text=True, timeout=60)
    out = r.stdout.split(maxsplit=1)
    assert len(out) == 2, r.stdout + r.stderr
    try:
        assert out[1].strip() == "None", f"left: {out[1]}"
    finally:
        _kill(int(out[0]))
