"""A bench's child processes never outlive it: on SIGTERM, SIGHUP, SIGINT and any exit of the Python
process (normal or by an exception), every process it started (simulated servers, gateways, peer
routers, vLLM, load generators; and theirs) is sent SIGTERM, then SIGKILL after a grace.

``install()`` (the ``kvgate bench`` and ``kvgate demo`` command lines call it first, ``kvgate.cli``;
not an in-process ``kvgate.bench.cli.main``, whose caller keeps its own handlers and exit) registers
``reap`` with ``atexit`` and as the SIGTERM / SIGHUP handler (which then dies of that signal, as it
would have). SIGINT keeps Python's handler: a Ctrl-C cancels ``asyncio.run``'s task or raises
``KeyboardInterrupt``, the benches' ``finally`` blocks stop their processes, and ``atexit`` takes
whatever is left.

What is reaped is found, not registered: this process's descendants (``/proc``, parent by parent) at
the moment of the reap, and every process in a process group one of them leads (the helpers start
their children in a session of their own, ``start_new_session``, so a process's own children share its
group). ``install()`` also makes this process a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``):
an orphan among them (a server crashed and was collected, its workers left; a process that daemonized)
is re-parented to it, not to init, and stays a descendant. (Those of them that end meanwhile stay
zombies of the bench until it exits.) Each is identified by pid and start time, checked just before it
is signalled. Linux only (``/proc``); elsewhere ``reap`` does nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
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


def _scan() -> dict[int, _Stat]:
    out: dict[int, _Stat] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := _stat(int(name))) is not None:
                out[int(name)] = st
    return out


def descendants(root: int | None = None) -> dict[int, int]:
    """``pid -> start time`` of ``root``'s living descendants (default: this process) and of every
    process in a process group one of them leads; ``root`` itself excluded."""
    root = os.getpid() if root is None else root
    table = _scan()
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
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    try:
        os.killpg(pgid, 0)  # (no process at all, zombies included: no /proc scan)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return any(st[1] == pgid and st[2] != "Z" for st in _scan().values())


def _signal_all(procs: Iterable[int], sig: int) -> None:
    for pid in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate(procs: dict[int, int], grace_s: float = GRACE_S) -> dict[int, int]:
    """SIGTERM to each of ``procs`` (pid -> start time), SIGKILL to those still running ``grace_s``
    later; those that had to be killed."""
    procs = alive(procs)
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (procs := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_all(procs, signal.SIGKILL)
    return procs


def reap(grace_s: float = GRACE_S) -> dict[int, int]:
    """Terminate every descendant of this process (see the module's docstring); those killed."""
    found = descendants()
    found.pop(_resource_tracker_pid(), None)  # multiprocessing's: ends by itself with us
    return terminate(found, grace_s) if found else {}


def _resource_tracker_pid() -> int:
    try:
        from multiprocessing import resource_tracker
    except ImportError:  # pragma: no cover
        return 0
    return getattr(resource_tracker._resource_tracker, "_pid", None) or 0


_installed = False
_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    """Orphaned descendants re-parent to this process, not to init (Linux >= 3.4)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover (no libc prctl)
        return False


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
