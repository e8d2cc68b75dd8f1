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
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvgate import lifeline

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k != lifeline.ENV_VAR} | {"PYTHONPATH": str(ROOT / "src")}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux")

# A bench as the command line runs one: the reaper installed (a short grace), then its children.
_BENCH = r"""
import subprocess, sys, time
from kvgate import lifeline
from kvgate.bench import reaper

reaper.install(grace_s=0.5)
PIPE = subprocess.PIPE
# A child that ignores SIGTERM (the kernel's parent-death SIGTERM too), and its child, which inherits that.
deaf_cmd = ["sh", "-c", "trap '' TERM; sleep 120 & echo $!; wait"]
deaf = subprocess.Popen(lifeline.die_with_parent_argv(deaf_cmd), stdout=PIPE, text=True,
                        start_new_session=True)
deaf_child = int(deaf.stdout.readline())
# A child that starts a process in a session of its own and exits: an orphan, re-parented to the bench.
gone = subprocess.Popen(lifeline.die_with_parent_argv([sys.executable, "-c", "import subprocess; "
                         "print(subprocess.Popen(['sleep', '120'], start_new_session=True).pid)"]),
                        stdout=PIPE, text=True)
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


class _Bench:
    """A script run as a bench (``_bench``), and what the test leaves for the way out to end."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.procs: dict[int, int] = {}  # pid -> start time: SIGKILLed if running
        self.stopped: list[int] = []  # SIGSTOPped (a watchdog held): continued
        self.others: list[subprocess.Popen[bytes]] = []  # started by the test: killed and waited for

    def ready(self) -> list[int]:
        """The numbers of its first line (printed once it is ready: pids, mostly)."""
        assert self.proc.stdout is not None
        return [int(x) for x in self.proc.stdout.readline().split()]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def hold(self, watchdog: int, pids: list[int]) -> None:
        """Its watchdog is held (SIGSTOP, by the bench): continued on the way out; ``pids`` ended."""
        self.stopped.append(watchdog)
        self.procs.update(_start_times(pids))


@contextlib.contextmanager
def _bench(tmp_path: Path, source: str, *args: str, **popen: Any) -> Iterator[_Bench]:
    """``source`` run as a bench, its stdout a pipe (``popen``: its process group or session); on the way
    out it is SIGKILLed, and so is what the test put in its ``procs`` and ``others``."""
    script = tmp_path / "bench.py"
    script.write_text(source)
    run = _Bench(subprocess.Popen([sys.executable, str(script), *args], env=ENV, stdout=subprocess.PIPE,
                                  text=True, **popen))  # fmt: skip
    try:
        yield run
    finally:
        run.kill()
        for pid in run.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _kill_all(run.procs)
        for other in run.others:
            other.kill()
            other.wait()


def test_a_bench_killed_by_sigkill_leaves_no_process(tmp_path: Path) -> None:
    """The orphan and both deaf processes end once the bench is SIGKILLed, and so does the watchdog. A
    process of the bench's own process group that is not its descendant (``| tee`` in a shell job) is
    left alone. Before: the orphan, the deaf child and its child ran on."""
    with _bench(tmp_path, _BENCH, process_group=0) as run:
        sibling = subprocess.Popen(["sleep", "60"], process_group=run.proc.pid)  # (its job's ``tee``)
        run.others.append(sibling)
        watchdog, *pids = run.ready()
        run.procs.update(_start_times([watchdog, *pids]))
        run.kill()
        left = _wait_gone(run.procs, within_s=60)
        assert not left, f"left running after the bench's SIGKILL: {sorted(left)} of {pids}"
        assert sibling.poll() is None, "the watchdog killed a process of the bench's group it had not started"


def test_the_watchdog_ends_after_its_process_exits_normally(tmp_path: Path) -> None:
    """A bench that exits on its own (its ``atexit`` reap stops its children) leaves no watchdog."""
    code = ("from kvgate import lifeline; from kvgate.bench import reaper; reaper.install(); "
            "assert lifeline.sync(); print(lifeline.watchdog_pid(), flush=True)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    deadline = time.monotonic() + 60
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
        assert not _wait_gone(procs, within_s=60)
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
    with _bench(tmp_path, _VLLM_PARENT, str(tmp_path), start_new_session=True) as parent:
        pids = parent.ready()
        parent.procs.update(_start_times(pids))
        parent.kill()
        left = _wait_gone(parent.procs, within_s=60)
        assert not left, f"left running after the parent's SIGKILL: {sorted(left)} of {pids}"


# --- review s12-hard ---------------------------------------------------------------------------------------


def _wait_ended(pid: int, within_s: float) -> None:
    """Wait (bounded) until ``pid`` is gone or a zombie."""
    deadline = time.monotonic() + within_s
    while (st := lifeline.stat(pid)) is not None and st[2] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)


_NESTED = r"""
import os, subprocess, sys, time
from kvgate import lifeline
from kvgate.bench import reaper

reaper.install()  # the outer bench (kvgate bench live, ...): a child subreaper with its watchdog
# Three nested benches as live_fleet / delay_relay start them (every python -m kvgate.bench.X installs).
child = ("from kvgate import lifeline; from kvgate.bench import reaper; reaper.install(); "
         "print(lifeline.watchdog_pid(), flush=True)")
nested = [subprocess.run([sys.executable, "-c", child], check=True, capture_output=True, text=True).stdout
          for _ in range(3)]
me, mine = os.getpid(), lifeline.watchdog_pid()
deadline = time.monotonic() + 20  # (a nested watchdog would end soon after its bench)
while time.monotonic() < deadline:
    table = lifeline.scan()
    zombies = [p for p, st in table.items() if st[0] == me and st[2] == "Z"]
    if not [p for p, st in table.items() if st[0] == me and st[2] != "Z" and p != mine]:
        break
    time.sleep(0.05)
print(len(zombies), " ".join(s.strip() for s in nested), flush=True)
"""


def test_a_nested_bench_starts_no_watchdog_of_its_own_and_leaves_no_zombie(tmp_path: Path) -> None:
    """Review s12-hard M1: a ``python -m kvgate.bench.X`` child of a bench (``simproc`` for each live
    fleet, ``delay_relay``) started a watchdog of its own, which outlived it, was re-parented to the outer
    bench (a subreaper) and stayed a zombie there until the bench exited (fails before: 3 zombies). The
    outer bench's watchdog already covers the child (its descendants stay in the outer tree): the child
    starts none."""
    script = tmp_path / "bench.py"
    script.write_text(_NESTED)
    out = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    zombies, *nested = out.stdout.split()
    assert int(zombies) == 0, f"zombie children of the bench: {zombies}"
    assert nested == ["None"] * 3, f"the nested benches started watchdogs: {nested}"


_UNCOVERED = r"""
import os, subprocess, sys
from kvgate import lifeline
from kvgate.bench import reaper

reaper.install()
# A nested bench whose environment does not say it is covered (a caller that builds its own env): it
# starts its own watchdog, which is re-parented to this bench once the nested one ended.
env = {k: v for k, v in os.environ.items() if k != "KVGATE_WATCHDOG"}
child = ("from kvgate import lifeline; from kvgate.bench import reaper; reaper.install(); "
         "assert lifeline.sync(); print(lifeline.watchdog_pid(), flush=True)")
proc = subprocess.Popen([sys.executable, "-c", child], env=env, stdout=subprocess.PIPE, text=True,
                        start_new_session=True)
nested = int(proc.stdout.readline())
proc.wait()
print(nested, flush=True)
sys.stdin.readline()  # (the test saw the nested watchdog a zombie of ours)
reaper.collect_orphans(proc.pid)  # (what Proc.stop runs once a child it stopped ended)
print(lifeline.stat(nested) is None, flush=True)
"""


def test_the_nested_watchdog_a_bench_inherits_is_collected(tmp_path: Path) -> None:
    """Review s12-hard M1: a nested bench's watchdog that did start (its bench not covered) ends, a
    zombie of the outer bench; ``collect_orphans``, which ``Proc.stop`` runs, collects it (by its name,
    ``kvgate-watchdog``). Fails before: it stayed a zombie until the outer bench exited."""
    script = tmp_path / "bench.py"
    script.write_text(_UNCOVERED)
    bench = subprocess.Popen([sys.executable, str(script)], env=ENV, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert bench.stdin is not None and bench.stdout is not None
        nested = int(bench.stdout.readline())
        _wait_ended(nested, within_s=60)
        st = lifeline.stat(nested)
        assert st is not None and st[0] == bench.pid and st[2] == "Z", st
        bench.stdin.write("\n")
        bench.stdin.flush()
        assert bench.stdout.readline().strip() == "True", "the nested watchdog is still a zombie"
    finally:
        bench.kill()
        bench.wait()


_HARNESS = r"""
import subprocess, sys
from pathlib import Path
from kvgate import lifeline
from kvgate.realvllm import harness

server = harness.VLLMServer(harness.ServerSpec(port=1), Path("/no-model"), Path(sys.argv[1]))
server.command = lambda: ["true"]  # (vLLM's stand-in; started and stopped as a test does)
server.start()
server.proc.wait()
server.stop()
# A helper this run leaves on purpose (a cache server, an ssh ControlMaster): it detaches into a session
# of its own; the watchdog lists it (sync) before its starter ends.
sh = "setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $!; read _"
starter = subprocess.Popen(["sh", "-c", sh], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
helper = int(starter.stdout.readline())
assert lifeline.sync()
starter.communicate("\n")
print(lifeline.watchdog_pid(), helper, lifeline.stat(helper)[3], flush=True)
"""


def test_the_harness_watchdog_leaves_what_the_harness_did_not_start(tmp_path: Path) -> None:
    """Review s12-hard L1: ``VLLMServer.start``'s watchdog watched the whole process using the harness
    (pytest, ``scripts/realvllm``) and, at its normal exit, terminated every process it had ever listed:
    here a helper that detached on purpose (fails before: it was killed). Now it covers the servers'
    process groups (and their descendants) only."""
    script = tmp_path / "run.py"
    script.write_text(_HARNESS)
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], env=ENV, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    watchdog, helper, start = (int(x) for x in out.stdout.split())
    try:
        _wait_ended(watchdog, within_s=30)  # (its sweep done)
        assert lifeline.alive({helper: start}), "the detached helper was killed at the normal exit"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)


def test_the_watchdog_holds_none_of_its_process_stdio(tmp_path: Path) -> None:
    """Review s12-hard L2: the watchdog inherited its process's stderr and held it open until its sweep
    ended, so whoever read that stderr to its end (``capture_output``, ``| tee``, a bench's reader)
    waited for the watchdog too, up to the grace after a SIGKILL (fails before: fd 2 shared)."""
    code = ("import os; from kvgate import lifeline; wd = lifeline.start_watchdog(); l = os.readlink; "
            "print([l(f'/proc/{wd}/fd/{i}') == l(f'/proc/self/fd/{i}') for i in (0, 1, 2)])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=ENV, stdin=subprocess.PIPE, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[False, False, False]", out.stdout


_STALE = r"""
import os, select, signal
from kvgate import lifeline

wd = lifeline.start_watchdog()
assert lifeline.sync()
os.kill(wd, signal.SIGSTOP)
try:
    assert not lifeline.sync(timeout_s=0.2)  # (no answer: it is stopped)
    os.kill(wd, signal.SIGCONT)
    select.select([lifeline._watchdog[1]], [], [], 30)  # (its late answer arrived)
    os.kill(wd, signal.SIGSTOP)
    stale = lifeline.sync(timeout_s=0.2)  # (it is stopped again: no fresh listing can answer)
finally:
    os.kill(wd, signal.SIGCONT)
print(stale, lifeline.sync(), flush=True)
"""


def test_sync_does_not_take_a_late_answer_for_its_own(tmp_path: Path) -> None:
    """Review s12-hard L4: after a ``sync()`` timed out, the watchdog's late answer stayed in the socket
    and the next ``sync()`` returned True at once, without a fresh listing (fails before: True)."""
    script = tmp_path / "stale.py"
    script.write_text(_STALE)
    out = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"], out.stdout


# --- session 13 ---------------------------------------------------------------------------------------------


def test_a_sigterm_to_the_watchdog_sweeps_what_it_covers_before_it_ends(tmp_path: Path) -> None:
    """A plain SIGTERM to the watchdog (``kill``, a shutdown's SIGTERM to every process) ended it at once,
    without a sweep: what it covered ran on, unwatched (fails before: the three ran on). Now it sweeps
    first (SIGTERM, SIGKILL after the grace to the deaf ones), then ends; the process it watches, still
    running, is not signalled, nor a process of its group that it did not start."""
    with _bench(tmp_path, _BENCH, process_group=0) as run:
        sibling = subprocess.Popen(["sleep", "60"], process_group=run.proc.pid)
        run.others.append(sibling)
        watchdog, *pids = run.ready()
        run.procs.update(_start_times(pids))
        os.kill(watchdog, signal.SIGTERM)
        left = _wait_gone(run.procs, within_s=60)
        assert not left, f"left running after the watchdog's SIGTERM: {sorted(left)} of {pids}"
        _wait_ended(watchdog, within_s=60)
        st = lifeline.stat(watchdog)
        assert st is None or st[2] == "Z", "the watchdog did not end"
        assert run.proc.poll() is None, "the watchdog signalled the process it watches"
        assert sibling.poll() is None, "the watchdog killed a process of the bench's group it had not started"


# A bench whose watchdog lists only at its start and when asked (a long tick: the window made wide), then,
# after its last listing, a child that double-forks a daemon (setsid; the middle process exits: the
# daemon is re-parented to the bench, a subreaper) and a direct child that ignores SIGTERM.
_UNLISTED = r"""
import subprocess, sys, time
from kvgate import lifeline

lifeline.become_subreaper()
wd = lifeline.start_watchdog(grace_s=0.5, tick_s=600)
assert lifeline.sync(), "the watchdog did not answer"  # (its last listing)
# The watchdog lists once more right after its answer (its loop's top): held (SIGSTOP, as a loaded machine
# may hold it; the test sends SIGCONT once the bench died) so that its last listing cannot see what follows
# (review s13-hard L4: descheduled for a few ms, it could have listed both, and the test passed without
# the marker sweep).
lifeline.os.kill(wd, lifeline.signal.SIGSTOP)
while lifeline.stat(wd)[2] != "T":
    time.sleep(0.001)
PIPE = subprocess.PIPE
mid = subprocess.Popen(["sh", "-c", "setsid sleep 120 </dev/null >/dev/null 2>&1 & echo $!"], stdout=PIPE,
                       text=True)
daemon = int(mid.stdout.readline())
mid.wait()
while lifeline.stat(daemon)[0] != lifeline.os.getpid():
    time.sleep(0.01)  # (re-parented to us: we are a subreaper)
deaf = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 120"], start_new_session=True)
print(lifeline.watchdog_pid(), daemon, deaf.pid, flush=True)
time.sleep(120)
"""


def _kill_the_bench_of_a_held_watchdog(run: _Bench, watchdog: int) -> dict[int, int]:
    """SIGKILL the bench whose watchdog it holds (``hold``), then continue the watchdog; what of the held
    pids runs on after its sweep (bounded wait)."""
    run.kill()
    os.kill(watchdog, signal.SIGCONT)
    return _wait_gone(run.procs, within_s=60)


def test_what_detached_after_the_last_listing_is_swept_too(tmp_path: Path) -> None:
    """A process the watchdog had not listed when its process died (a daemon's double fork and a child
    ignoring SIGTERM, both started after the last listing) was re-parented to init, out of the tree, and
    ran on (fails before: both ran on). They carry the ``KVGATE_WATCHDOG`` entry the bench exported to
    its descendants, naming this watchdog: the sweep finds them by it."""
    with _bench(tmp_path, _UNLISTED, start_new_session=True) as run:
        watchdog, *pids = run.ready()
        run.hold(watchdog, pids)
        left = _kill_the_bench_of_a_held_watchdog(run, watchdog)
        assert not left, f"left running after the bench's SIGKILL: {sorted(left)} of {pids}"
        _wait_ended(watchdog, within_s=60)


def _environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def test_the_sweep_spares_what_does_not_carry_its_marker() -> None:
    """``marked``: a process started with the entry is found, one with another watchdog's entry or none
    is not."""
    # Unique to this run (review s13-hard L4: a fixed entry was also held by a concurrent run's process,
    # and ``marked`` looks at every process of the machine).
    me, nonce = os.getpid(), random.randrange(1 << 30)
    mine = lifeline.cover_marker(me, nonce, 3, 4)
    other = lifeline.cover_marker(me, nonce, 3, 5)
    env = {k: v for k, v in os.environ.items() if k != lifeline.ENV_VAR}
    entries = [{lifeline.ENV_VAR: m.decode().split("=", 1)[1]} for m in (mine, other)] + [{}]
    procs = [subprocess.Popen(["sleep", "60"], env={**env, **e}) for e in entries]
    try:
        # Popen returns once the child's exec has begun (vfork's parent resumes at exec_mmap), before the
        # kernel has laid out the new environment: /proc/<pid>/environ reads empty for that moment (seen
        # once in CI under load). Each child is read until its environment is there.
        deadline = time.monotonic() + 60
        while not all(_environ(p.pid) for p in procs[:2]) and time.monotonic() < deadline:
            time.sleep(0.01)
        table = lifeline.scan()
        assert lifeline.marked(table, mine) == {procs[0].pid}
    finally:
        for p in procs:
            p.kill()
            p.wait()


# --- review s13-hard ----------------------------------------------------------------------------------------

# L1: a bench starts a child that ignores SIGTERM (a direct child: listed by any listing), then its watchdog,
# and SIGTERMs the watchdog at once, before its interpreter has started and set its handler.
_EARLY_SIGTERM = r"""
import os, signal, subprocess, sys, time
from kvgate import lifeline

lifeline.become_subreaper()
deaf = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 120"], start_new_session=True)
start = lifeline.stat(deaf.pid)[3]
wd = lifeline.start_watchdog(grace_s=0.5)
os.kill(wd, signal.SIGTERM)  # (a shutdown's SIGTERM, right after the watchdog's start)
code = lifeline._watchdog[0].wait(timeout=60)  # (its sweep, if any, is over)
deadline = time.monotonic() + 5
while lifeline.alive({deaf.pid: start}) and time.monotonic() < deadline:
    time.sleep(0.05)
print(deaf.pid, start, code, int(bool(lifeline.alive({deaf.pid: start}))), flush=True)
time.sleep(120)
"""


def test_a_sigterm_to_a_watchdog_still_starting_sweeps_too(tmp_path: Path) -> None:
    """Review s13-hard L1: until the watchdog's interpreter had set its SIGTERM handler (0.1-1 s under
    load; ``start_watchdog`` does not wait), a SIGTERM ended it by the default action, without a sweep
    (fails before: the deaf child ran on). Now SIGTERM is blocked from before its fork until the handler
    is set: it stays pending, then sweeps."""
    with _bench(tmp_path, _EARLY_SIGTERM, start_new_session=True) as run:
        deaf, start, code, alive = run.ready()
        run.procs[deaf] = start
        assert code == -signal.SIGTERM, code
        assert not alive, "the watchdog, SIGTERMed while starting, ended with no sweep: the deaf child ran on"


def test_the_marker_test_survives_a_concurrent_run_of_itself() -> None:
    """Review s13-hard L4: a concurrent run of the marker test (the lead's suite while an engineer runs this
    file; all as one user) held a process with the same fixed entry, and ``marked`` found it too (fails
    before: two pids). The entry is now unique to each run."""
    other_run = subprocess.Popen(["sleep", "60"], env={**ENV, lifeline.ENV_VAR: "1:2:3:4"})  # (the old entry)
    try:
        test_the_sweep_spares_what_does_not_carry_its_marker()
    finally:
        other_run.kill()
        other_run.wait()


# L2: ``marked`` reads /proc/<pid>/environ, the environment block of the process's exec: a process the bench
# forked without an exec shows the bench's block, without the entry (the bench set it with putenv, on the
# heap), though its os.environ holds it. It still holds the bench's end of the watchdog's socket.
_PY_DAEMON = r"""
import os, signal, sys, time
from kvgate import lifeline

lifeline.become_subreaper()
lifeline.start_watchdog(grace_s=0.5, tick_s=600)  # (lists at its start and when asked: the window wide)
assert lifeline.sync(), "the watchdog did not answer"  # (its last listing)
wd = lifeline.watchdog_pid()
os.kill(wd, signal.SIGSTOP)  # (held until the bench died: its last listing cannot see the daemon)
while lifeline.stat(wd)[2] != "T":
    time.sleep(0.001)
assert lifeline.ENV_VAR in os.environ
r, w = os.pipe()
mid = os.fork()
if mid == 0:  # a daemon the Python way (a fork start method, a hand-made daemon): fork, setsid, fork
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert lifeline.ENV_VAR in os.environ
        os.write(w, b"%d\n" % os.getpid())
        time.sleep(120)
    os._exit(0)
os.waitpid(mid, 0)
daemon = int(os.read(r, 64))
while lifeline.stat(daemon)[0] != os.getpid():
    time.sleep(0.01)  # (re-parented to us: we are a subreaper)
with open(f"/proc/{daemon}/environ", "rb") as f:
    seen = lifeline.ENV_VAR.encode() in f.read()
print(wd, daemon, int(seen), flush=True)
time.sleep(120)
"""


def test_a_daemon_forked_by_the_bench_itself_is_swept_too(tmp_path: Path) -> None:
    """Review s13-hard L2: a daemon the bench forked itself (os.fork, no exec) after the watchdog's last
    listing was not found by the marker sweep (its /proc/<pid>/environ lacks the entry) and ran on
    (fails before). The sweep now also takes what holds the bench's end of the watchdog's socket open."""
    with _bench(tmp_path, _PY_DAEMON, start_new_session=True) as run:
        watchdog, daemon, seen = run.ready()
        run.hold(watchdog, [daemon])
        assert not seen, "its /proc/<pid>/environ holds the entry: not the case this test is about"
        left = _kill_the_bench_of_a_held_watchdog(run, watchdog)
        assert not left, "the bench's forked daemon runs on after its watchdog's sweep"
        _wait_ended(watchdog, within_s=60)


def test_holding_finds_only_what_holds_the_descriptor() -> None:
    """``holding``: a process with a descriptor open on the socket is found; one without is not."""
    import socket

    ours, theirs = socket.socketpair()
    link = f"socket:[{os.fstat(ours.fileno()).st_ino}]"
    procs = [
        subprocess.Popen(["sleep", "60"], pass_fds=(ours.fileno(),)),
        subprocess.Popen(["sleep", "60"], pass_fds=(theirs.fileno(),)),
        subprocess.Popen(["sleep", "60"]),
    ]
    try:
        table = lifeline.scan()
        assert lifeline.holding(table, link) - {os.getpid()} == {procs[0].pid}
    finally:
        ours.close()
        theirs.close()
        for p in procs:
            p.kill()
            p.wait()


# --- session 14 ---------------------------------------------------------------------------------------------

# A process using the real-vLLM harness: a server started (vLLM's stand-in), its watchdog held (SIGSTOP)
# after its last listing; then the server's child starts a process in a session of its own and exits (a
# daemon's double fork): re-parented away, out of the watched group's tree before any listing saw it.
_HARNESS_DETACHED = r"""
import os, signal, sys, time
from pathlib import Path
from kvgate import lifeline
from kvgate.realvllm import harness

tmp = Path(sys.argv[1])
go, pidfile = tmp / "go", tmp / "daemon"
server = harness.VLLMServer(harness.ServerSpec(port=1), Path("/no-model"), tmp)
inner = f"setsid sleep 120 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}"
sh = f"while [ ! -e {go} ]; do sleep 0.01; done; sh -c '{inner}'; exec sleep 120"
server.command = lambda: ["sh", "-c", sh]
server.start()
wd = lifeline.watchdog_pid()
assert lifeline.sync(), "the watchdog did not answer"
os.kill(wd, signal.SIGSTOP)
while lifeline.stat(wd)[2] != "T":
    time.sleep(0.001)
go.touch()
while not pidfile.exists():
    time.sleep(0.01)
print(wd, server.proc.pid, int(pidfile.read_text()), flush=True)
time.sleep(120)
"""


def test_the_harness_watchdog_sweeps_what_its_server_detached_after_its_last_listing(tmp_path: Path) -> None:
    """``kvgate.realvllm``'s watchdog (process groups only) exported no ``KVGATE_WATCHDOG`` entry, so its
    sweep took only what it had listed: a daemon a server detached after the last listing ran on after
    the harness's SIGKILL (fails before). Now the harness passes the entry to its servers
    (``lifeline.cover_env``): the daemon carries it and is swept."""
    with _bench(tmp_path, _HARNESS_DETACHED, str(tmp_path), start_new_session=True) as run:
        watchdog, *pids = run.ready()
        run.hold(watchdog, pids)
        left = _kill_the_bench_of_a_held_watchdog(run, watchdog)
        assert not left, f"left running after the harness's SIGKILL: {sorted(left)} of {pids}"
        _wait_ended(watchdog, within_s=30)


def test_cover_env_names_the_processes_own_watchdog_only(tmp_path: Path) -> None:
    """``cover_env``: empty without a watchdog; the entry of this process's own watchdog once started
    (groups only: nothing exported to ``os.environ``, review s12-hard L1)."""
    code = ("import os; from kvgate import lifeline; a = lifeline.cover_env(); "
            "wd = lifeline.start_watchdog(tree=False); b = lifeline.cover_env(); "
            "print(a == {}, b[lifeline.ENV_VAR].split(':')[0] == str(wd), b[lifeline.ENV_VAR].split(':')[2] "
            "== str(os.getpid()), lifeline.ENV_VAR in os.environ)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "False"], out.stdout


# --- session 15 ---------------------------------------------------------------------------------------------

# A bench whose watchdog is held (SIGSTOP) after its last listing; then a child it started leading a group of
# its own (as the helpers start every server) starts a process in that group with an environment rebuilt
# (``env -i``: no ``KVGATE_WATCHDOG`` entry) that ignores SIGTERM, and exits: the process, never listed, is
# re-parented to the bench (a subreaper) and, once the bench died, to init.
_GROUP_UNLISTED = r"""
import subprocess, sys, time
from kvgate import lifeline

lifeline.become_subreaper()
wd = lifeline.start_watchdog(grace_s=0.5, tick_s=600)
PIPE = subprocess.PIPE
leader = subprocess.Popen(["sh", "-c", "read go; env -i sh -c 'trap \"\" TERM; exec sleep 120' & echo $!"],
                          stdin=PIPE, stdout=PIPE, text=True, start_new_session=True)
assert lifeline.sync(), "the watchdog did not answer"  # (its last listing: the leader, not what follows)
lifeline.os.kill(wd, lifeline.signal.SIGSTOP)
while lifeline.stat(wd)[2] != "T":
    time.sleep(0.001)
leader.stdin.write("go\n"); leader.stdin.flush()
member = int(leader.stdout.readline())
leader.wait()
while lifeline.stat(member)[0] != lifeline.os.getpid():
    time.sleep(0.01)  # (re-parented to us: we are a subreaper)
assert lifeline.stat(member)[1] == leader.pid  # (still in the leader's group)
print(wd, member, flush=True)
time.sleep(120)
"""


def test_an_unlisted_process_left_in_a_listed_group_is_swept(tmp_path: Path) -> None:
    """A process started after the last listing with a rebuilt environment (``env -i``), in the group of a
    listed process that has ended since: no entry, no held socket, no listed ancestor left (fails before:
    it ran on). The watchdog now remembers the groups its listed processes led, while any process of
    them is left, and its sweep takes their members."""
    with _bench(tmp_path, _GROUP_UNLISTED, start_new_session=True) as run:
        watchdog, *pids = run.ready()
        run.hold(watchdog, pids)
        left = _kill_the_bench_of_a_held_watchdog(run, watchdog)
        assert not left, f"left running after the bench's SIGKILL: {sorted(left)} of {pids}"
        _wait_ended(watchdog, within_s=60)
