"""Review s10-hard's findings on ``kvgate.bench.reaper`` / ``kvgate.bench.procs`` (each test failed before
its fix): a stopped process group whose leader's pid was reused is not signalled (M2); an in-process
``kvgate.bench.cli.main`` installs no process-wide handlers, the command line still does (L1); the
orphaned children of a group leader that already exited are still found and reaped (M1)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

from kvgate.bench import procs

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
from kvgate.bench import reaper
reaper.install()
sh = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True,
                      stderr=subprocess.DEVNULL, start_new_session=True)
orphan = int(sh.stdout.readline())
sh.wait()  # (asyncio's child watcher collects a bench's exited child at once, as here)
found = orphan in reaper.descendants()
st = reaper._stat(orphan)
reaper.reap(grace_s=0.5)
print(orphan, found, bool(st and reaper.alive({orphan: st[3]})))
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
