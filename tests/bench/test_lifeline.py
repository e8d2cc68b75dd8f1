"""A bench killed by SIGKILL leaves nothing behind (session 12, ``kvgate.lifeline``'s watchdog).

Before, ``PR_SET_PDEATHSIG`` (SIGTERM) reached only the bench's own children: an orphan re-parented to
the bench earlier (a child that started a process in a session of its own and exited) ran on, and so did
a child that ignores SIGTERM and its own child. Now ``reaper.install()`` also starts a watchdog process
that lists the bench's descendants and, once the bench has ended, terminates what of them runs on
(SIGTERM, then SIGKILL after the grace).

Real processes; no sleeps that must be long enough: the bench waits until the watchdog has listed its
descendants (``lifeline.sync()``) before it says it is ready, and the test waits (bounded) for each
process to end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvgate import lifeline

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux")

# A bench as the command line runs one: the reaper installed (a short grace), then its children.
_BENCH = r"""
import subprocess, sys, time
from kvgate import lifeline
from kvgate.bench import reaper

reaper.install(grace_s=0.5)
PIPE = subprocess.PIPE
# A child that ignores SIGTERM (the kernel's parent-death SIGTERM too), and its child, which inherits that.
deaf = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 120 & echo $!; wait"], stdout=PIPE, text=True,
                        start_new_session=True, preexec_fn=reaper.die_with_parent())
deaf_child = int(deaf.stdout.readline())
# A child that starts a process in a session of its own and exits: an orphan, re-parented to the bench.
gone = subprocess.Popen([sys.executable, "-c", "import subprocess; "
                         "print(subprocess.Popen(['sleep', '120'], start_new_session=True).pid)"],
                        stdout=PIPE, text=True, preexec_fn=reaper.die_with_parent())
orphan = int(gone.stdout.readline())
gone.wait()
while int(open(f"/proc/{orphan}/stat").read().rsplit(")", 1)[1].split()[1]) != reaper.os.getpid():
    time.sleep(0.01)  # (re-parented to us: we are a subreaper)
assert lifeline.sync(), "the watchdog did not answer"
print(lifeline.watchdog_pid(), deaf.pid, deaf_child, orphan, flush=True)
time.sleep(120)
"""


def _start_times(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        st = lifeline.stat(pid)
        assert st is not None and st[2] != "Z", f"{pid} not running"
        out[pid] = st[3]
    return out


def _wait_gone(procs: dict[int, int], within_s: float) -> dict[int, int]:
    deadline = time.monotonic() + within_s
    while (left := lifeline.alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _kill_all(procs: dict[int, int]) -> None:
    for pid in lifeline.alive(procs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_bench_killed_by_sigkill_leaves_no_process(tmp_path: Path) -> None:
    """The orphan and both deaf processes end once the bench is SIGKILLed, and so does the watchdog. A
    process of the bench's own process group that is not its descendant (``| tee`` in a shell job) is
    left alone. Before: the orphan, the deaf child and its child ran on."""
    script = tmp_path / "bench.py"
    script.write_text(_BENCH)
    bench = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, text=True,
                             process_group=0)  # fmt: skip
    procs: dict[int, int] = {}
    sibling = None
    try:
        sibling = subprocess.Popen(["sleep", "60"], process_group=bench.pid)  # (its job's ``tee``)
        assert bench.stdout is not None
        watchdog, *pids = (int(x) for x in bench.stdout.readline().split())
        procs = _start_times([watchdog, *pids])
        bench.kill()
        bench.wait()
        left = _wait_gone(procs, within_s=20)
        assert not left, f"left running after the bench's SIGKILL: {sorted(left)} of {pids}"
        assert sibling.poll() is None, "the watchdog killed a process of the bench's group it had not started"
    finally:
        bench.kill()
        bench.wait()
        _kill_all(procs)
        if sibling is not None:
            sibling.kill()
            sibling.wait()


def test_the_watchdog_ends_after_its_process_exits_normally(tmp_path: Path) -> None:
    """A bench that exits on its own (its ``atexit`` reap stops its children) leaves no watchdog."""
    code = ("from kvgate import lifeline; from kvgate.bench import reaper; reaper.install(); "
            "assert lifeline.sync(); print(lifeline.watchdog_pid(), flush=True)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    deadline = time.monotonic() + 20
    while (st := lifeline.stat(pid)) is not None and st[2] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    st = lifeline.stat(pid)
    assert st is None or st[2] == "Z", "the watchdog outlived the bench"


def test_sweep_kills_what_ignores_sigterm_and_what_descends_from_it() -> None:
    """``sweep`` on a list holding only the deaf parent: its child (not listed) ends too, by SIGKILL."""
    deaf = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 120 & echo $!; wait"], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    procs: dict[int, int] = {}
    try:
        assert deaf.stdout is not None
        child = int(deaf.stdout.readline())
        procs = _start_times([deaf.pid, child])
        killed = lifeline.sweep({deaf.pid: procs[deaf.pid]}, grace_s=0.2, exclude=set())
        assert set(killed) == {deaf.pid, child}
        assert not _wait_gone(procs, within_s=10)
    finally:
        _kill_all(procs)
        deaf.wait()


_VLLM_PARENT = r"""
import sys, time
from pathlib import Path
from kvgate import lifeline
from kvgate.realvllm import harness

pidfile = Path(sys.argv[1]) / "grandchild"
server = harness.VLLMServer(harness.ServerSpec(port=1), Path("/no-model"), Path(sys.argv[1]))
# (vLLM's stand-in: a process with a child of its own, as vLLM has its engine processes)
sh = f"sleep 120 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"
server.command = lambda: ["sh", "-c", sh]
server.start()
while not pidfile.exists():
    time.sleep(0.01)
assert lifeline.sync(), "the watchdog did not answer"
print(lifeline.watchdog_pid(), server.proc.pid, int(pidfile.read_text()), flush=True)
time.sleep(120)
"""


def test_a_realvllm_harness_killed_by_sigkill_leaves_no_process(tmp_path: Path) -> None:
    """``kvgate.realvllm``'s servers share the benches' lifeline: a process that started one (a stand-in
    with a child, as vLLM's engine processes) and is SIGKILLed leaves neither. Before: its own
    ``PR_SET_PDEATHSIG`` (SIGKILL) ended the server alone, and the server's child ran on."""
    script = tmp_path / "parent.py"
    script.write_text(_VLLM_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=ENV, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)  # fmt: skip
    procs: dict[int, int] = {}
    try:
        assert parent.stdout is not None
        pids = [int(x) for x in parent.stdout.readline().split()]
        procs = _start_times(pids)
        parent.kill()
        parent.wait()
        left = _wait_gone(procs, within_s=20)
        assert not left, f"left running after the parent's SIGKILL: {sorted(left)} of {pids}"
    finally:
        parent.kill()
        parent.wait()
        _kill_all(procs)
