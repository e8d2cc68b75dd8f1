"""A bench's child processes never outlive it: on SIGTERM, SIGHUP, SIGINT and any exit of the Python
process (normal or by an exception), every process it started (simulated servers, gateways, peer
routers, vLLM, load generators; and theirs) is sent SIGTERM, then SIGKILL after a grace.

``install()`` (the ``kvgate bench`` and ``kvgate demo`` command lines call it first, ``kvgate.cli``, and
every ``python -m kvgate.bench.X``; not an in-process ``kvgate.bench.cli.main``, whose caller keeps its
own handlers and exit) registers
``reap`` with ``atexit`` and as the SIGTERM / SIGHUP handler (which then dies of that signal, as it
would have). SIGINT keeps Python's handler: a Ctrl-C cancels ``asyncio.run``'s task or raises
``KeyboardInterrupt``, the benches' ``finally`` blocks stop their processes, and ``atexit`` takes
whatever is left.

What is reaped is found, not registered: this process's descendants (``/proc``, parent by parent) at
the moment of the reap, and every process in a process group one of them leads (the helpers start
their children in a session of their own, ``start_new_session``, so a process's own children share its
group). ``install()`` also makes this process a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``):
an orphan among them (a server crashed and was collected, its workers left; a process that daemonized)
is re-parented to it, not to init, and stays a descendant. (``Proc.stop`` collects those of its group
once ended, ``collect_orphans``; other orphans that end stay zombies of the bench until it exits.) Each
is identified by pid and start time, checked just before it is signalled. Linux only (``/proc``);
elsewhere ``reap`` does nothing.

A bench killed by SIGKILL runs none of this: the children it starts itself (``procs.start`` and the
benches' own ``Popen``s) are started with ``die_with_parent()`` (``PR_SET_PDEATHSIG``), so the kernel
sends them SIGTERM when it dies, and each stops its own children. Orphans re-parented to the bench and
processes started outside its tree are not covered then.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType

GRACE_S = 5.0  # from SIGTERM to SIGKILL

# pid -> (parent pid, process group, state, start time): one /proc scan.
_Stat = tuple[int, int, str, int]


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # gone (or not ours to read)
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # (the command name may hold spaces and parentheses)
    return int(fields[1]), int(fields[2]), fields[0].decode(), int(fields[19])


def _scan_or_none() -> dict[int, _Stat] | None:
    """Every process's ``_Stat``; None when ``/proc`` cannot be listed."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    out: dict[int, _Stat] = {}
    for name in names:
        if name.isdigit() and (st := _stat(int(name))) is not None:
            out[int(name)] = st
    return out


def _scan() -> dict[int, _Stat]:
    return _scan_or_none() or {}


def _tree(table: dict[int, _Stat], root: int) -> set[int]:
    """``root``'s descendants in ``table`` and every process of a group one of them leads (any state)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _pgrp, _state, _start) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    leaders = {pid for pid in found if table[pid][1] == pid}
    found |= {pid for pid, st in table.items() if st[1] in leaders}
    found.discard(root)
    return found


def descendants(root: int | None = None) -> dict[int, int]:
    """``pid -> start time`` of ``root``'s living descendants (default: this process) and of every
    process in a process group one of them leads; ``root`` itself excluded."""
    table = _scan()
    found = _tree(table, os.getpid() if root is None else root)
    return {pid: table[pid][3] for pid in found if table[pid][2] != "Z"}


def alive(procs: dict[int, int]) -> dict[int, int]:
    """Those of ``procs`` (pid -> start time) still running (not gone, not a zombie, not a pid reused)."""
    out = {}
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[3] == start and st[2] != "Z":
            out[pid] = start
    return out


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count; when ``/proc`` cannot be
    listed, whether any process of it exists, zombies included)."""
    try:
        os.killpg(pgid, 0)  # (no process at all, zombies included: no /proc scan)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    table = _scan_or_none()
    if table is None:  # (it exists; only /proc could tell a zombie: not "gone" on a guess)
        return True
    return any(st[1] == pgid and st[2] != "Z" for st in table.values())


def collect_orphans(pgid: int) -> None:
    """Collect the zombies of group ``pgid`` that are this process's children but not ones it started
    (orphans re-parented to it, a subreaper; its own child, the group's leader, is left to whoever
    started it): without this they stay zombies of the bench until it exits."""
    me = os.getpid()
    for pid, (ppid, pgrp, state, _start) in _scan().items():
        if state == "Z" and ppid == me and pgrp == pgid and pid != pgid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _signal_all(procs: Iterable[int], sig: int) -> None:
    for pid in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate(
    procs: dict[int, int], grace_s: float = GRACE_S, late: Callable[[], dict[int, int]] | None = None
) -> dict[int, int]:
    """SIGTERM to each of ``procs`` (pid -> start time), SIGKILL to those still running ``grace_s``
    later, or at once when the wait is interrupted (a ``KeyboardInterrupt``); then SIGKILL to what
    ``late()`` finds running (processes started meanwhile). Those that had to be killed."""
    procs = alive(procs)
    killed: dict[int, int] = {}
    try:
        _signal_all(procs, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while (procs := alive(procs)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        killed = alive(procs)
        _signal_all(killed, signal.SIGKILL)
        if late is not None:
            new = alive(late())
            _signal_all(new, signal.SIGKILL)
            killed |= new
    return killed


_warned_no_proc = False


def reap(grace_s: float = GRACE_S) -> dict[int, int]:
    """Terminate every descendant of this process (see the module's docstring); those killed. What
    started during the grace (a supervisor restarting a worker) is found by a second scan (the
    descendants, and the members of the groups led by those found first) and SIGKILLed. SIGINT is
    ignored meanwhile (from the main thread): a second Ctrl-C does not cut the reap short."""
    global _warned_no_proc
    me = os.getpid()
    table = _scan_or_none()
    if table is None:
        if not _warned_no_proc and sys.platform.startswith("linux"):
            _warned_no_proc = True
            print("kvgate: /proc cannot be listed; child processes not reaped", file=sys.stderr)
        return {}
    found = descendants()
    tracker = _resource_tracker_pid()
    found.pop(tracker, None)  # multiprocessing's: ends by itself with us
    if not found:
        return {}
    groups = {pid: start for pid, start in found.items() if table.get(pid, (0, 0))[1] == pid}

    def late() -> dict[int, int]:
        now = _scan()
        pids = _tree(now, me)
        for pgid, start in groups.items():
            leader = now.get(pgid)
            if leader is None or leader[3] == start:  # (not a group whose id was reused meanwhile)
                pids |= {pid for pid, st in now.items() if st[1] == pgid}
        pids.discard(tracker)
        return {pid: now[pid][3] for pid in pids if now[pid][2] != "Z"}

    with _sigint_ignored():
        return terminate(found, grace_s, late)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():
        yield  # (a handler not set from Python could not be restored)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _resource_tracker_pid() -> int:
    try:
        from multiprocessing import resource_tracker
    except ImportError:  # pragma: no cover
        return 0
    return getattr(resource_tracker._resource_tracker, "_pid", None) or 0


_installed = False
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# What a child started with ``die_with_parent()`` gets when the bench dies without reaping it (SIGKILL,
# the OOM killer): SIGTERM, so that it stops its own children as it does when a bench stops it (a
# ``kvgate serve --workers`` supervisor its workers, vLLM its engine processes; SIGKILL would orphan them).
DEATH_SIGNAL = signal.SIGTERM


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), looked up in this process (never between a fork and its exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover (no libc prctl)
        return None


def _become_subreaper() -> bool:
    """Orphaned descendants re-parent to this process, not to init (Linux >= 3.4)."""
    prctl = _prctl()
    return prctl is not None and int(prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def die_with_parent(sig: int = DEATH_SIGNAL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for a child the bench starts: the child gets ``sig`` when the bench dies, even by
    SIGKILL, which runs no handler and no ``atexit`` (Linux ``PR_SET_PDEATHSIG``; it survives the exec).
    A child whose bench died between its fork and the ``prctl`` (it was re-parented already, no signal
    will come) exits at once, before its exec. None (nothing to run) off Linux, and from a thread other
    than the main one: the kernel signals the child when the *thread* that forked it ends, and a worker
    thread ends long before the bench. Only the bench's own children are covered: theirs are stopped by
    them (on ``sig``), or reaped by ``reap`` when the bench exits otherwise."""
    if threading.current_thread() is not threading.main_thread() or (prctl := _prctl()) is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # (in the child, between fork and exec: no lookups, no locks, no handlers)
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one while reaping ends us at once
    reap()
    os.kill(os.getpid(), signum)  # die of it, as without the handler


def install() -> None:
    """Reap this process's children at exit and on SIGTERM / SIGHUP, and keep orphaned descendants its
    own (a child subreaper) (once; from the main thread, the only one that may set signal handlers; a
    signal ignored, as under ``nohup``, stays ignored)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    _become_subreaper()
    atexit.register(reap)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:  # (one ignored stays so: ``nohup``)
            signal.signal(sig, _on_signal)
