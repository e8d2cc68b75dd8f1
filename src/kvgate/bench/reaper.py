"""A bench's child processes never outlive it: on SIGTERM, SIGHUP, SIGINT and any exit of the Python
process (normal or by an exception), every process it started (simulated servers, gateways, peer
routers, vLLM, load generators; and theirs) is sent SIGTERM, then SIGKILL after a grace.

``install()`` (the ``kvgate bench`` and ``kvgate demo`` command lines call it first, ``kvgate.cli``, and
every ``python -m kvgate.bench.X``; not an in-process ``kvgate.bench.cli.main``, whose caller keeps its
own handlers and exit) registers
``reap`` with ``atexit`` and as the SIGTERM / SIGHUP handler (which then dies of that signal, as it
would have). SIGINT keeps Python's handler: a Ctrl-C cancels ``asyncio.run``'s task or raises
``KeyboardInterrupt``, the benches' ``finally`` blocks stop their processes, and ``atexit`` takes
whatever is left. Python runs these handlers on the main thread only, and a thread that is not the main
one may take the signal (the main thread blocks all of them across each fork): ``install()`` also makes
the loops ``asyncio.run`` creates wake on every signal (``kvgate.bench.sigwake``), else the main thread
slept on in ``epoll_wait`` until the loop's next timer (session 32's CI: a Ctrl-C unseen for 120 s).

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
benches' own ``Popen``s) are started with ``lifeline.die_with_parent_argv()`` (``PR_SET_PDEATHSIG``), so
the kernel sends them SIGTERM when it dies, and each stops its own children; and ``install()`` starts the
bench's watchdog (``kvgate.lifeline.start_watchdog``), a process of its own that keeps a list of the bench's
descendants and, once the bench ended, terminates those still running (SIGTERM, SIGKILL after the
grace): orphans re-parented to the bench, grandchildren whose parent ignores SIGTERM. A bench started
by a bench (``python -m kvgate.bench.simproc`` for each live fleet, ``delay_relay``) starts none: the
outer one's covers it (``KVGATE_WATCHDOG``); one that did start (its environment did not say) and ends
after its bench, a zombie of this one, is collected by the next ``collect_orphans`` (``Proc.stop``) after
it ended. Processes started outside its tree (through a daemon) are not covered; see ``kvgate.lifeline``
for the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from kvgate import lifeline
from kvgate.bench import sigwake

GRACE_S = lifeline.GRACE_S  # from SIGTERM to SIGKILL

# The process primitives (``/proc`` scans, ``terminate``, ``die_with_parent_argv``, the subreaper, the
# watchdog) live in ``kvgate.lifeline``, which ``kvgate.realvllm`` shares (it may not import ``bench``);
# the benches and their tests call them there.


def descendants(root: int | None = None) -> dict[int, int]:
    """``pid -> start time`` of ``root``'s living descendants (default: this process) and of every
    process in a process group one of them leads; ``root`` itself excluded."""
    table = lifeline.scan()
    found = lifeline.tree(table, [os.getpid() if root is None else root])
    return {pid: table[pid][3] for pid in found if table[pid][2] != "Z"}


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count; when ``/proc`` cannot be
    listed, whether any process of it exists, zombies included)."""
    try:
        os.killpg(pgid, 0)  # (no process at all, zombies included: no /proc scan)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    table = lifeline.scan_or_none()
    if table is None:  # (it exists; only /proc could tell a zombie: not "gone" on a guess)
        return True
    return any(st[1] == pgid and st[2] != "Z" for st in table.values())


def collect_orphans(pgid: int) -> None:
    """Collect the zombies of group ``pgid`` that are this process's children but not ones it started
    (orphans re-parented to it, a subreaper; its own child, the group's leader, is left to whoever
    started it), and those that are a nested bench's watchdog (told by its name; one that outlived its
    bench, re-parented to this one, review s12-hard M1): without this they stay zombies of the bench
    until it exits."""
    me = os.getpid()
    mine = lifeline.watchdog_pid()
    for pid, (ppid, pgrp, state, _start) in lifeline.scan().items():
        if state != "Z" or ppid != me or pid == mine:
            continue
        if (pgrp == pgid and pid != pgid) or lifeline.is_watchdog(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


_warned_no_proc = False


def reap(grace_s: float = GRACE_S) -> dict[int, int]:
    """Terminate every descendant of this process (see the module's docstring); those killed. What
    started during the grace (a supervisor restarting a worker) is found by a second scan (the
    descendants, and the members of the groups led by those found first) and SIGKILLed. SIGINT is
    ignored meanwhile (from the main thread): a second Ctrl-C does not cut the reap short."""
    global _warned_no_proc
    me = os.getpid()
    table = lifeline.scan_or_none()
    if table is None:
        if not _warned_no_proc and sys.platform.startswith("linux"):
            _warned_no_proc = True
            print("kvgate: /proc cannot be listed; child processes not reaped", file=sys.stderr)
        return {}
    found = descendants()
    tracker = _resource_tracker_pid()
    spared = {tracker, lifeline.watchdog_pid() or 0}  # multiprocessing's: ends by itself with us; the
    for pid in spared:  # watchdog: after us, sweeps what this reap missed (it ends by itself)
        found.pop(pid, None)
    if not found:
        return {}
    groups = {pid: start for pid, start in found.items() if table.get(pid, (0, 0))[1] == pid}

    def late() -> dict[int, int]:
        now = lifeline.scan()
        pids = lifeline.tree(now, [me])
        for pgid, start in groups.items():
            leader = now.get(pgid)
            if leader is None or leader[3] == start:  # (not a group whose id was reused meanwhile)
                pids |= {pid for pid, st in now.items() if st[1] == pgid}
        pids -= spared
        return {pid: now[pid][3] for pid in pids if now[pid][2] != "Z"}

    with _sigint_ignored():
        return lifeline.terminate(found, grace_s, late)


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


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one while reaping ends us at once
    reap()
    os.kill(os.getpid(), signum)  # die of it, as without the handler


def install(grace_s: float = GRACE_S) -> None:
    """Reap this process's children at exit and on SIGTERM / SIGHUP, keep orphaned descendants its
    own (a child subreaper), and start its watchdog (``kvgate.lifeline``: what it leaves when killed by
    SIGKILL is terminated; ``grace_s`` from SIGTERM to SIGKILL there) (once; from the main thread, the
    only one that may set signal handlers; a signal ignored, as under ``nohup``, stays ignored)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    sigwake.install()  # (these handlers and Ctrl-C's wake its asyncio loop whatever thread takes them)
    lifeline.become_subreaper()
    lifeline.start_watchdog(grace_s)
    atexit.register(reap)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:  # (one ignored stays so: ``nohup``)
            signal.signal(sig, _on_signal)
