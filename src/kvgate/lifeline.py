"""Child processes that end with the process that started them, even when it is killed by SIGKILL
(Linux; elsewhere every call here does nothing). Imports no ``kvgate`` package: ``kvgate.bench.reaper``
(the benches) and ``kvgate.realvllm`` (the real-vLLM harness, which may not import ``bench``) share it.

- ``die_with_parent_argv(cmd)``: ``cmd`` prefixed with ``setpriv --pdeathsig TERM --`` (util-linux), so
  the child gets a signal when its parent dies, even by SIGKILL (``PR_SET_PDEATHSIG``; no ``preexec_fn``,
  which forks and runs grpcio's fork handlers: fixfork15); ``die_with(parent)`` the same, called in a
  child not started by an exec (a ``multiprocessing`` spawn target, a fork without an exec). Only the
  process's own children, and only SIGTERM by default, which a child may ignore (its own children then
  run on); but for those it holds whatever the child does to its environment, title or descriptors (the
  kernel keeps it across an exec, not across a set-user-ID one: ``sudo``).
- ``become_subreaper()``: orphaned descendants re-parent to this process, not to init
  (``PR_SET_CHILD_SUBREAPER``), so they stay its descendants.
- ``start_watchdog()``: a small process of its own (``python -I -c``, named ``kvgate-watchdog``, its
  standard streams ``/dev/null``, in a session of its own, so a kill of this process's group does not
  reach it) that watches this process (a pidfd, else a poll) and keeps a list of what it covers (pid and
  start time: a ``/proc`` scan each ``TICK_S`` and whenever ``sync()`` asks): this process's
  descendants (a bench: ``tree``), or only the process groups passed to ``watch_group()`` and their
  descendants (``kvgate.realvllm``'s servers). When this process has ended, however it ended, the
  watchdog terminates every process on that list still running (the same pid and start time), their
  descendants and the members of their process groups: SIGTERM, then SIGKILL to what still runs after
  the grace (what ignores SIGTERM too) and to what started meanwhile. That covers the orphans earlier
  re-parented to this process and grandchildren whose parent ignores SIGTERM, which
  ``PR_SET_PDEATHSIG`` does not reach. A ``tree`` watchdog of a child subreaper tells its descendants
  (``KVGATE_WATCHDOG``, naming the watchdog and this process by pid and start time): a nested bench
  starts none of its own (their descendants stay in its tree; what a nested bench killed by SIGKILL
  leaves is then terminated when the outer bench ends, by its reap or its watchdog, not at once); and its
  sweep also takes, wherever they are now, what it had not listed yet: every process whose exec-time
  environment block (``/proc/<pid>/environ``, as it is in that process's memory now) holds that entry
  (``marked``: an exec'd descendant that inherited it), and every process that holds this process's end
  of the watchdog's socket open (``holding``: a fork of this process without an exec, and its forks; it
  shows this process's block, which lacks the entry: ``os.environ`` sets it on the heap).

What a daemonizing descendant does: while this process lives, a descendant's double fork (``setsid``, the
middle process exits) re-parents the daemon to this process, a subreaper, so it stays in the tree and is
listed at the next tick. A subreaper does not help once this process died: its orphans go to the
nearest subreaper among its *ancestors*, or init, and the watchdog is not one (it is this process's
child). What the watchdog had not listed by then (started or detached within the last ``TICK_S`` and
not ``sync()``ed, or started before its first listing: ``start_watchdog`` does not wait for it, its
interpreter's start takes 0.1-1 s on a loaded machine) is found by the ``KVGATE_WATCHDOG`` entry in its
exec-time environment (exported to every descendant only by a subreaper whose watchdog covers the whole
tree: a bench, ``reaper.install()``; a watchdog of process groups only, ``kvgate.realvllm``'s, has it
passed to the groups' leaders it started, ``cover_env``) or, in a ``tree`` watchdog, for a fork without
an exec of this process, by the socket it still holds; so is what detaches during the sweep's grace
(its second scan).

The sweep also takes every member of a process group a listed process led (session 15), remembered
while its leader runs or, its leader gone, while a process is left in it: for a ``tree`` watchdog one it
covers (a member left by its leader is re-parented to this process, a subreaper: covered; review
s15-hard L2), for one without ``tree`` any (such a member is re-parented out of the watched groups'
tree: not covered, yet ours; review s15-fixes-a L1), and any too for a ``tree`` watchdog whose process
is not a subreaper (``become_subreaper`` failed: a sandbox, an old kernel; its orphans leave its tree as
well, review s16-hard I2; the watchdog is told, at its start or by ``r`` later). What stayed in such a
group is taken however it was started, entry or socket or not. And a process this process started itself
ends by ``PR_SET_PDEATHSIG`` whatever it did to its environment, title or descriptors
(``die_with_parent_argv``, ``die_with``: every start of the benches and harnesses passes one), unless it
ignores that SIGTERM.

Not covered: a process started through a daemon (``docker run``, ``systemd-run``, ``at``: neither a
descendant nor an heir of the environment); one not listed yet (if this process's own child: one that
ignores SIGTERM), out of every group a listed process led (it left it, ``setsid``, or was started in a
new one), that was exec'd with an environment rebuilt without the entry (``env -i``, ``sudo``, a caller
passing its own ``env``), or that overwrote its environment block (``setproctitle`` does, on Linux, to
make room for its title), or a fork without an exec of this process that closed its descriptors
(``python-daemon``'s ``DaemonContext``, a ``closerange``), or that was started before the entry was
exported (before ``start_watchdog``) and left the tree before the first listing; for a
watchdog without ``tree`` (``kvgate.realvllm``'s) any process not listed yet that left its watched
groups' tree without the entry (a fork without an exec of a process it covers; before session 14,
every one: no entry was passed); anything when the watchdog ends too: a SIGKILL of every process of the user,
the OOM killer choosing it, a container stopped (a plain SIGTERM of the watchdog is not one: it sweeps
what it covers, the watched process still running or not, then dies of the signal; also while it is
still starting, SIGTERM being blocked from its fork until its handler is set; but a process still
running after such a sweep is unwatched from then on: no new watchdog is started for it); a pid reused
in the instant between the check and the signal (no pidfd per process); and, the other way, the
members of a new group that took the id of a remembered one after all of that one ended, once the new
group's own leader ended too: a ``tree`` watchdog of a subreaper sweeps them only if all of that
happened since its last listing (the next one forgets the group, none of it covered: review s15-hard
L2); one without ``tree`` (or of no subreaper) also later, while the new group has a member, if the id
was taken within one tick of the old group's end (a listing in between, finding none of it, forgets it;
review s15-fixes-a L1). Taken: the id's reuse needs the pid space to wrap within a tick.
Cost: one ``/proc/<pid>/stat`` read per process of the whole machine each ``TICK_S`` per watchdog (~5 ms
with ~110 processes under load 8); at the sweep only, twice, per process of the machine one
``/proc/<pid>/environ`` read (~1 ms in all with ~100 processes) and, for this user's, a ``readlink`` per
open descriptor (~8 ms in all).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence

GRACE_S = 5.0  # from SIGTERM to SIGKILL
TICK_S = 0.5  # the watchdog's list of descendants is at most this old (and fresh after a ``sync()``)

# pid -> (parent pid, process group, state, start time): one /proc scan.
Stat = tuple[int, int, str, int]


def stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # gone (or not ours to read)
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # (the command name may hold spaces and parentheses)
    return int(fields[1]), int(fields[2]), fields[0].decode(), int(fields[19])


def scan_or_none() -> dict[int, Stat] | None:
    """Every process's ``Stat``; None when ``/proc`` cannot be listed."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    out: dict[int, Stat] = {}
    for name in names:
        if name.isdigit() and (st := stat(int(name))) is not None:
            out[int(name)] = st
    return out


def scan() -> dict[int, Stat]:
    return scan_or_none() or {}


def tree(table: dict[int, Stat], roots: Iterable[int], groups: Iterable[int] = ()) -> set[int]:
    """The descendants of ``roots`` in ``table`` and every process of a group one of them leads, or of
    one of ``groups``, and theirs (any state); the roots themselves not included."""
    children: dict[int, list[int]] = {}
    members: dict[int, list[int]] = {}
    for pid, (ppid, pgrp, _state, _start) in table.items():
        children.setdefault(ppid, []).append(pid)
        members.setdefault(pgrp, []).append(pid)
    found: set[int] = set()
    seen_groups: set[int] = set()
    todo = [c for r in roots for c in children.get(r, ())]
    for g in groups:
        seen_groups.add(g)
        todo.extend(members.get(g, ()))
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
        if table[pid][1] == pid and pid not in seen_groups:
            seen_groups.add(pid)
            todo.extend(members.get(pid, ()))
    return found - set(roots)


descendants_of = tree  # (``watch``'s parameter ``tree`` hides the function there)


def alive(procs: dict[int, int]) -> dict[int, int]:
    """Those of ``procs`` (pid -> start time) still running (not gone, not a zombie, not a pid reused)."""
    out = {}
    for pid, start in procs.items():
        st = stat(pid)
        if st is not None and st[3] == start and st[2] != "Z":
            out[pid] = start
    return out


def signal_all(procs: Iterable[int], sig: int) -> None:
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
        signal_all(procs, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while (procs := alive(procs)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        killed = alive(procs)
        signal_all(killed, signal.SIGKILL)
        if late is not None:
            new = alive(late())
            signal_all(new, signal.SIGKILL)
            killed |= new
    return killed


# --- the kernel's help: parent-death signal, child subreaper ---------------------------------------------

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# What a child started with ``die_with_parent_argv()`` gets when its parent dies without stopping it (SIGKILL,
# the OOM killer): SIGTERM, so that it stops its own children as it does when it is stopped (a
# ``kvgate serve --workers`` supervisor its workers, vLLM its engine processes; SIGKILL would orphan them).
DEATH_SIGNAL = signal.SIGTERM


def prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), looked up in this process (never between a fork and its exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover (no libc prctl)
        return None


_subreaper = False  # this process became a child subreaper


def become_subreaper() -> bool:
    """Orphaned descendants re-parent to this process, not to init (Linux >= 3.4)."""
    global _subreaper
    fn = prctl()
    ok = fn is not None and int(fn(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    with _watchdog_lock:
        if ok and not _subreaper and _watchdog is not None:  # (told: its rule for a led group, ``watch``)
            with contextlib.suppress(OSError):
                _watchdog[1].sendall(b"r\n")
        _subreaper = _subreaper or ok
    return ok


_SETPRIV: list[str | None] = []  # util-linux's setpriv, looked up once (empty: not yet)


def setpriv() -> str | None:
    """The path of util-linux's ``setpriv`` (``--pdeathsig``, util-linux >= 2.33), None where not found
    or off Linux; looked up once."""
    if not _SETPRIV:
        import shutil

        _SETPRIV.append(shutil.which("setpriv") if sys.platform.startswith("linux") else None)
    return _SETPRIV[0]


def die_with_parent_argv(cmd: Sequence[str], *, waited: bool = False) -> list[str]:
    """``cmd`` made to get SIGTERM when this process dies, even by SIGKILL, which runs no handler and no
    ``atexit``: prefixed with ``setpriv --pdeathsig TERM --`` (util-linux), which sets
    ``PR_SET_PDEATHSIG`` and execs ``cmd`` in the same process (the pid is the child's; the kernel keeps
    the setting across that exec and ``cmd``'s own, not across a set-user-ID one: ``sudo``). Unlike a
    ``preexec_fn`` (which made ``subprocess`` fork rather than ``vfork`` and run the at-fork handlers:
    grpcio's, with its threads busy in this process, broke the child, SIGABRT / SIGSEGV before its exec;
    fixfork15), nothing runs between the fork and the exec. ``cmd`` unchanged (a list) off Linux, where
    ``setpriv`` is not found, and from a thread other than the main one unless ``waited``: the kernel
    signals the child when the *thread* that forked it ends, and a worker thread may end long before the
    process (the watchdog, ``start_watchdog``, watches the process, not a thread). ``waited``: the thread
    starting the child waits for its end (``subprocess.run``: it returns only once the child was
    collected, killed first on a time-out or an exception), so that thread ends after the child, or with
    the process: the signal is right from any thread (an install run through ``asyncio.to_thread``,
    review s15-hard L3). A child whose parent died before ``setpriv``'s ``prctl`` (already re-parented,
    no signal will come) exits 1 before ``cmd``: ``/bin/sh`` execs ``cmd`` only if its parent (``$PPID``,
    read after the ``prctl``) is still this process (one more exec, ~1 ms)."""
    argv = list(cmd)
    if not waited and threading.current_thread() is not threading.main_thread():
        return argv
    if (tool := setpriv()) is None:
        return argv
    sig = DEATH_SIGNAL.name.removeprefix("SIG")
    return [
        tool,
        "--pdeathsig",
        sig,
        "--",
        "/bin/sh",
        "-c",
        _PARENT_CHECK,
        "kvgate-lifeline",
        str(os.getpid()),
        *argv,
    ]


# Run after setpriv's prctl, before the command (each an exec in the same process): a parent already gone
# (the child re-parented: no signal will come) ends it at once, exit code 1, as the ``preexec_fn`` did.
_PARENT_CHECK = '[ "$PPID" = "$1" ] || exit 1; shift; exec "$@"'


def die_with(parent: int | None, sig: int = DEATH_SIGNAL) -> bool:
    """``die_with_parent_argv`` for a child not started by an exec, called first thing in it: a
    ``multiprocessing`` spawn target (``parent``: ``multiprocessing.parent_process()``'s pid; None, as
    there outside a child: nothing done), the child's branch of an ``os.fork()`` (``parent`` read before
    the fork). From now on it gets ``sig`` when the thread that started it ends (the main thread: the
    process); ``parent`` already gone (it was re-parented: no signal will come) ends it at once, exit
    code 1. A ``forkserver`` child (``parent``: the process that asked for it) was forked by the fork
    server, a child of ``parent``: the signal then comes when the fork server ends (it does once ``parent``
    did), and ``parent`` is taken as gone only once the fork server is not its child any more (review
    s15-hard L4; a fork server started by another process than ``parent`` is taken as gone). Whether it
    was set (False off Linux)."""
    if parent is None or (fn := prctl()) is None:
        return False
    fn(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    ppid = os.getppid()
    if ppid != parent and ((st := stat(ppid)) is None or st[0] != parent or st[2] == "Z"):
        os._exit(1)
    return True


# --- the watchdog -----------------------------------------------------------------------------------------

# Set by a watchdog that covers its process's whole tree, in a child subreaper (a bench): inherited by its
# descendants, whose own ``start_watchdog()`` then starts none (review s12-hard M1).
# "<watchdog pid>:<its start time>:<watched pid>:<its start time>".
ENV_VAR = "KVGATE_WATCHDOG"
# The watchdog's name (``/proc/<pid>/comm``, kept by a zombie): a bench collects a nested bench's watchdog
# re-parented to it (``kvgate.bench.reaper.collect_orphans``) by it.
WATCHDOG_NAME = b"kvgate-watchdog"
PR_SET_NAME = 15

_watchdog: tuple[subprocess.Popen[bytes], socket.socket] | None = None  # it, this end of its socket
_watchdog_tree = False  # it covers this process's whole tree (else only the groups given to watch_group)
_watchdog_lock = threading.Lock()
_seq = 0  # the last request's number (each answer names its request's: a late one is told apart)


def watchdog_pid() -> int | None:
    """The pid of this process's watchdog (None: none started)."""
    return None if _watchdog is None else _watchdog[0].pid


def is_watchdog(pid: int) -> bool:
    """Whether ``pid`` (running or a zombie) is a watchdog (by its name)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip() == WATCHDOG_NAME
    except OSError:
        return False


def covering_watchdog() -> int | None:
    """The pid of an ancestor's watchdog that covers this process already (``ENV_VAR``): still running
    (the start time checked) and watching a process that is an ancestor of this one (pid and start
    time). None when there is none."""
    try:
        wd, wd_start, watched, watched_start = (int(x) for x in os.environ.get(ENV_VAR, "").split(":"))
    except ValueError:
        return None
    if not alive({wd: wd_start}):
        return None
    pid = os.getpid()
    for _ in range(4096):  # (the chain of parents; bounded)
        st = stat(pid)
        if st is None or st[0] <= 1:
            return None
        pid = st[0]
        if pid == watched:
            return wd if alive({watched: watched_start}) else None
    return None


def start_watchdog(grace_s: float = GRACE_S, tick_s: float = TICK_S, *, tree: bool = True) -> int | None:
    """Start this process's watchdog (see the module's docstring) once; its pid. ``tree``: it covers
    this process's descendants (a bench); else only the process groups passed to ``watch_group`` and
    their descendants (``kvgate.realvllm``'s servers: not what else the process using the harness
    started, review s12-hard L1); a later call with ``tree`` widens a watchdog started without. None off
    Linux, when ``/proc`` cannot be read, and (``tree``) when an ancestor's watchdog covers this process
    already (``covering_watchdog``: a nested bench; its descendants are the ancestor's too). It ends by
    itself after this process ended and what it left was terminated (``grace_s`` from SIGTERM to
    SIGKILL). Its standard streams are ``/dev/null``: it holds none of this process's open (L2)."""
    global _watchdog, _watchdog_tree
    with _watchdog_lock:
        if _watchdog is not None:
            if tree and not _watchdog_tree:
                _watchdog_tree = True
                with contextlib.suppress(OSError):
                    _watchdog[1].sendall(b"t\n")
                _export_cover()
            return _watchdog[0].pid
        me = os.getpid()
        st = stat(me) if sys.platform.startswith("linux") else None
        if st is None or (tree and covering_watchdog() is not None):
            return None
        ours, theirs = socket.socketpair()  # (not inherited by our other children: close_fds)
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # (kvgate's parent folder)
        code = f"import sys; sys.path.insert(0, {here!r}); import kvgate.lifeline as m; m._watch_main()"
        # (and the inode of this end: held, as an open fd, by what this process forks without an exec)
        ino = os.fstat(ours.fileno()).st_ino
        args = [
            str(me),
            str(st[3]),
            str(theirs.fileno()),
            repr(grace_s),
            repr(tick_s),
            str(int(tree)),
            str(ino),
            str(int(_subreaper)),
        ]
        # SIGTERM blocked across the start (the mask survives fork and exec): one that arrives before the
        # watchdog's handler is set (its interpreter's start, 0.1-1 s under load) stays pending until
        # ``_watch_main`` has set it, and then sweeps, rather than ending it by the default action.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", code, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # (one holding this process's stderr delays its readers' EOF)
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # (a kill of our process group does not reach it)
            )
        except OSError:
            ours.close()
            return None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            theirs.close()
        _watchdog = (proc, ours)  # (kept: never waited for, it outlives us)
        _watchdog_tree = tree
        if tree:
            _export_cover()
        return proc.pid


def _export_cover() -> None:
    """Tell this process's descendants (``ENV_VAR``) that its watchdog covers them, when it does: it
    covers the whole tree, and this process is a child subreaper (their orphans stay in its tree)."""
    if _subreaper:
        os.environ.update(cover_env())


def cover_env() -> dict[str, str]:
    """The ``ENV_VAR`` entry naming this process's own watchdog (``{}`` without one), for the environment
    of a child that watchdog covers by its process group (``watch_group``: ``kvgate.realvllm``'s
    servers, whose watchdog does not cover the whole tree and exports nothing itself): its sweep then
    also takes the child's exec'd descendants that left the group's tree before its last listing (a
    daemon's double fork, an engine process whose parent died), as a bench's sweep takes its own
    (``marked``); and a bench nested in such a child starts no watchdog of its own (the group's
    descendants are covered). A watchdog covering the whole tree exports it to every descendant
    (``_export_cover``)."""
    if _watchdog is None:
        return {}
    me, wd = stat(os.getpid()), stat(_watchdog[0].pid)
    if me is None or wd is None:
        return {}
    name, value = cover_marker(_watchdog[0].pid, wd[3], os.getpid(), me[3]).decode().split("=", 1)
    return {name: value}


def sync(timeout_s: float = 5.0) -> bool:
    """Have the watchdog list what it covers now, and wait until it did (a process started and detached
    just before, which it could otherwise miss if this process died within ``TICK_S``). False when
    this process has no watchdog of its own (none started, or an ancestor's covers it) or it did not
    answer within ``timeout_s``; an answer to an earlier request that timed out is not taken for this
    one's (review s12-hard L4)."""
    return _ask(b"", timeout_s)


def watch_group(pgid: int, timeout_s: float = 5.0) -> bool:
    """Have the watchdog cover process group ``pgid`` (its members and their descendants) from now on,
    until no process of it is left; then ``sync()``. False when there is no watchdog or it did not
    answer within ``timeout_s``."""
    return _ask(b"g%d\n" % pgid, timeout_s)


def _ask(first: bytes, timeout_s: float) -> bool:
    global _seq
    if _watchdog is None:
        return False
    sock = _watchdog[1]
    with _watchdog_lock:
        _seq += 1
        want = b"k%d" % _seq
        deadline = time.monotonic() + timeout_s
        buf = b""
        try:
            sock.settimeout(timeout_s)
            sock.sendall(first + b"s%d\n" % _seq)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not (data := sock.recv(4096)):
                    return False
                *lines, buf = (buf + data).split(b"\n")
                if want in lines:  # (earlier ones' late answers: dropped)
                    return True
        except OSError:  # (a timeout too)
            return False
        return False


def _watch_main() -> None:
    parent, start, fd = (int(a) for a in sys.argv[1:4])
    grace_s, tick_s, tree = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6] == "1"
    their_end = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    subreaper = len(sys.argv) > 8 and sys.argv[8] == "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (a Ctrl-C is for the process it watches)
    # A SIGTERM (``kill``, a shutdown's SIGTERM to every process) ends it with a sweep, not without one:
    # its handler only wakes the loop (the wake-up fd, watched with the rest), which then sweeps, and it
    # then dies of the signal. One during a sweep does not cut the sweep short (it ends within the
    # grace); during a sweep after its process's death, it changes nothing at all: the watchdog then
    # exits 0 (review s13-hard nit). SIGTERM is blocked until the handler is set (since
    # ``start_watchdog``'s fork: review s13-hard L1), so one sent while it starts stays pending.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # (blocked since its start: start_watchdog)
    if (fn := prctl()) is not None:
        fn(PR_SET_NAME, WATCHDOG_NAME, 0, 0, 0)  # (its name: see WATCHDOG_NAME)
    sock = socket.socket(fileno=fd)
    if watch(
        parent, start, sock, grace_s, tick_s, tree, wake_fd=wake_r, their_end=their_end, subreaper=subreaper
    ):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # (dies of it, as without the handler)


def watch(
    parent: int,
    start: int,
    sock: socket.socket | None,
    grace_s: float,
    tick_s: float,
    tree: bool = True,
    wake_fd: int = -1,
    their_end: int = 0,
    subreaper: bool = False,
) -> bool:
    """The watchdog's loop: list what it covers (``tree``: ``parent``'s descendants; and the members of
    the groups it was asked to watch and their descendants) each ``tick_s`` and when asked on ``sock``,
    until ``parent`` (started at ``start``) ended, or ``wake_fd`` (the watchdog's SIGTERM) became
    readable, then terminate what of them runs on (after the SIGTERM: listed once more first, the parent
    still running; the parent itself is not signalled). ``sock`` carries lines: ``s<n>`` (list now, then
    answer ``k<n>``), ``g<pgid>`` (watch that group until none of it is left), ``t`` (cover the whole
    tree from now on), ``r`` (``parent`` became a child subreaper). ``their_end``: the inode of
    ``parent``'s end of ``sock`` (a ``tree`` sweep also takes what holds it open: ``parent``'s forks
    without an exec; 0: none). ``subreaper``: ``parent`` is a child subreaper (``become_subreaper``
    worked), which the ``tree`` rule for a remembered group rests on (below). Whether it ended on
    ``wake_fd``."""
    me = os.getpid()
    known: dict[int, int] = {}  # pid -> start time: every process covered seen, while it lives
    # The process groups a process it listed leads (pgid -> that leader's start time), kept while the
    # leader runs or a process is in the group (``tree`` in a subreaper: a process it covers; else any):
    # the sweep takes their members, the leader gone or not, also one never listed that dropped the
    # entry and the socket (``env -i``, ``setproctitle``, ``closerange``).
    led: dict[int, int] = {}
    groups: set[int] = set()  # the process groups it was asked to watch, while any process of them is left
    buf = b""
    st = stat(parent)
    parent_group = st[1] if st is not None else 0  # (a shell job's: ``| tee`` is in it; never swept)
    pidfd = -1
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(parent)
    poller = select.poll()
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    if sock is not None:
        poller.register(sock.fileno(), select.POLLIN)
    if wake_fd >= 0:
        poller.register(wake_fd, select.POLLIN)
    woken = False

    def parent_alive() -> bool:
        st = stat(parent)
        return st is not None and st[3] == start and st[2] != "Z"

    def list_descendants() -> None:
        table = scan()
        for pid in [p for p, s in known.items() if p not in table or table[p][3] != s]:
            del known[pid]
        groups.intersection_update({st[1] for st in table.values()})  # (an ended group's id may be reused)
        covered = {p for p in descendants_of(table, [parent] if tree else [], groups) if table[p][2] != "Z"}
        for pid in covered:
            if pid != me:
                known[pid] = table[pid][3]
                if table[pid][1] == pid and pid != parent_group:
                    led.setdefault(pid, table[pid][3])
        # A remembered group is kept while its leader (same start time) runs or a process in it is
        # left. In tree mode only one found covered now counts, not any process of the machine: its
        # id, once free, may be taken by an unrelated process that makes a group of it (``setsid``)
        # and whose leader then exits, a daemon's double fork; that group would otherwise be swept as
        # this one (review s15-hard L2). There a member left when its leader ended is re-parented to
        # the subreaper (``parent``: ``reaper.install`` makes it one before it starts a ``tree``
        # watchdog), so it is covered. Without ``tree`` (``kvgate.realvllm``'s), or when ``parent`` is
        # not a subreaper (the prctl failed: a sandbox, an old kernel; review s16-hard I2), such a
        # member is re-parented out of the watched tree (to init): not covered, yet ours, and one never
        # listed (forked between listings) is found only through this group; so any process of the
        # machine in it counts there (review s15-fixes-a L1), and the reuse above stays possible.
        # (Not when ``parent`` died during the scan: its children, re-parented away meanwhile, may have
        # been read as not covered; nothing is forgotten then.)
        if not parent_alive():
            return
        if tree and subreaper:
            live = {table[p][1] for p in covered}
        else:
            live = {st[1] for st in table.values() if st[2] != "Z"}
        for g in [g for g in led if g not in live and not (g in table and table[g][3] == led[g])]:
            del led[g]

    while parent_alive():
        list_descendants()
        ended = False
        for fd, _ev in poller.poll(int(tick_s * 1000)):
            if fd == pidfd:
                ended = True
            elif fd == wake_fd:
                woken = ended = True
            elif sock is not None:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:  # (its end closed: it ended, or it is ending)
                    poller.unregister(sock.fileno())
                    sock = None
                    continue
                *lines, buf = (buf + data).split(b"\n")
                answers, listed = [], False
                for line in lines:
                    if line == b"t":
                        tree, listed = True, False
                    elif line == b"r":
                        subreaper = True
                    elif line[:1] == b"g" and line[1:].isdigit():
                        groups.add(int(line[1:]))
                        listed = False
                    elif line[:1] == b"s":
                        if not listed and parent_alive():
                            list_descendants()
                            listed = True
                        answers.append(b"k" + line[1:] + b"\n")
                if answers:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"".join(answers))
        if ended:
            break
    if woken and parent_alive():
        list_descendants()  # (what started since the last listing)
    # What detached from the tree since the last listing (a daemon's double fork, a child started and
    # the process killed within ``tick_s``): re-parented to init by now, but an exec'd one carries the
    # variable this process exported to its descendants (``_export_cover``) naming this watchdog in the
    # environment block of its exec, and one ``parent`` forked without an exec (which shows ``parent``'s
    # block, without the variable) still holds ``parent``'s end of the socket, unless it closed it.
    # (a watchdog of the groups only: its process exported the entry only to the groups' leaders it
    # started, ``cover_env``; what else it started does not carry it and is spared, review s12-hard L1)
    me_st = stat(me)
    marker = b"" if me_st is None else cover_marker(me, me_st[3], parent, start)
    held = f"socket:[{their_end}]" if tree and their_end else ""
    sweep(known, grace_s, exclude={me, parent}, spare_group=parent_group, marker=marker, held=held, led=led)
    return woken


def cover_marker(watchdog: int, watchdog_start: int, watched: int, watched_start: int) -> bytes:
    """The environment entry (``ENV_VAR``) a covering watchdog's process exports to its descendants."""
    return f"{ENV_VAR}={watchdog}:{watchdog_start}:{watched}:{watched_start}".encode()


def marked(table: dict[int, Stat], entry: bytes) -> set[int]:
    """Those of ``table`` whose environment (as it was at their ``exec``, ``/proc/<pid>/environ``) holds
    the entry ``entry`` (``NAME=value``); those whose environment cannot be read are not."""
    out = set()
    needle = b"\0" + entry + b"\0"
    for pid in table:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:  # (gone, or not ours to read)
            continue
        if needle in b"\0" + env + (b"" if env.endswith(b"\0") else b"\0"):
            out.add(pid)
    return out


def holding(table: dict[int, Stat], link: str) -> set[int]:
    """Those of ``table`` with an open file descriptor on ``link`` (what ``/proc/<pid>/fd/<n>`` links
    to, e.g. ``socket:[123]``); those whose descriptors cannot be read (another user's) are not."""
    out = set()
    for pid in table:
        base = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(base)
        except OSError:  # (gone, or not ours to read)
            continue
        for fd in fds:
            try:
                if os.readlink(f"{base}/{fd}") == link:
                    out.add(pid)
                    break
            except OSError:
                continue
    return out


def sweep(
    known: dict[int, int],
    grace_s: float,
    exclude: set[int],
    spare_group: int = 0,
    marker: bytes = b"",
    held: str = "",
    led: dict[int, int] | None = None,
) -> dict[int, int]:
    """Terminate those of ``known`` (pid -> start time) still running, those whose environment holds the
    entry ``marker`` (``marked``; none when empty) and those with a descriptor open on ``held``
    (``holding``; none when empty), their descendants and the members of the groups they lead or
    belong to, and of the groups of ``led`` (pgid -> its leader's start time; not one whose id is now
    another process's, led by a process started at another time), but ``spare_group`` (SIGTERM;
    SIGKILL after ``grace_s`` to what still runs and to what started meanwhile); those that had to be
    killed."""

    def found() -> dict[int, int]:
        table = scan()
        roots = [p for p, s in known.items() if p in table and table[p][3] == s and table[p][2] != "Z"]
        if marker:
            roots += [p for p in marked(table, marker) if table[p][2] != "Z"]
        if held:
            roots += [p for p in holding(table, held) if table[p][2] != "Z"]
        groups = {table[p][1] for p in roots}
        groups |= {g for g, start in (led or {}).items() if g not in table or table[g][3] == start}
        groups -= {spare_group}
        pids = (tree(table, roots, groups) | set(roots)) - exclude
        return {p: table[p][3] for p in pids if table[p][2] != "Z"}

    return terminate(found(), grace_s, found)
