"""The watchdog's remembered groups (``led``): one whose id was freed and taken by an unrelated process
that made a group of it (``setsid``) before the next listing is forgotten at that listing, so that when the
unrelated group's leader exits (a daemon's double fork: the ``setsid`` middle process exits, the daemon
stays in its group) the sweep does not take the daemon for a member of the remembered group left by its
leader (review s15-hard L2; before, an entry was dropped only once *no* process had that group id).

Deterministic with ``/proc/sys/kernel/ns_last_pid`` (root; skipped otherwise): the unrelated process is
given the freed id. The watchdog loop (``lifeline.watch``) runs in a thread of the test, listing only when
asked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bench.test_lifeline_led_orphan_tree_false import _ask, _Counted, _settle, counted_scans
from kvgate import lifeline

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
    reason="needs Linux and a writable ns_last_pid (root)",
)

# The watched process: starts a child leading a group of its own (as procs.start does), prints its pid,
# collects it once it ended, then waits.
_PARENT = (
    "import subprocess, sys, time; c = subprocess.Popen(['sleep', '600'], start_new_session=True); "
    "print(c.pid, flush=True); c.wait(); time.sleep(600)"
)
# Not the watched process's descendant: takes pid G (ns_last_pid), makes it a session and group (setsid),
# forks a daemon that stays in group G, and exits (a daemon's double fork). Prints the daemon's pid.
_TAKE = r"""
import os, sys, time
g = int(sys.argv[1])
for _ in range(50):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(g - 1))
    pid = os.fork()
    if pid == 0:
        if os.getpid() != g:
            os._exit(3)
        os.setsid()
        d = os.fork()
        if d == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            time.sleep(600)
            os._exit(0)
        print(d, flush=True)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        sys.exit(0)
sys.exit("could not take the pid")
"""


def test_a_remembered_group_whose_id_was_reused_does_not_take_an_unrelated_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop lists once more right after each answer; its /proc snapshots are counted, so the child is
    # killed only once that listing has its snapshot (else it may not see group g at all: no entry).
    scans = counted_scans(monkeypatch)
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    daemon = 0
    try:
        assert parent.stdout is not None
        g = int(parent.stdout.readline())
        st = lifeline.stat(parent.pid)
        assert st is not None
        ours, raw = socket.socketpair()
        theirs = _Counted(raw, scans)
        watcher = threading.Thread(
            target=lifeline.watch,
            args=(parent.pid, st[3], theirs, 0.3, 600.0, True),
            kwargs={"subreaper": True},  # (a bench's: ``reaper.install`` made its process one)
            daemon=True,
        )
        watcher.start()
        _ask(ours, b"", 1)  # a listing: the child, leading group g, remembered
        _settle(scans, theirs)
        os.kill(g, signal.SIGKILL)  # the child ends, collected by its parent: group g is gone, pid g free
        deadline = time.monotonic() + 60
        while lifeline.stat(g) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lifeline.stat(g) is None
        took = subprocess.run(
            [sys.executable, "-c", _TAKE, str(g)], capture_output=True, text=True, timeout=30
        )
        if took.returncode != 0:
            pytest.skip(f"pid {g} could not be taken: {took.stderr}")
        daemon = int(took.stdout)
        d = lifeline.stat(daemon)
        assert d is not None and d[1] == g and lifeline.stat(g) is None  # an unrelated group g, leader gone
        _ask(ours, b"", 2)  # a listing after the reuse: the stale entry should be dropped here
        parent.kill()  # the watched process ends: the sweep
        parent.wait()
        watcher.join(timeout=60)
        assert not watcher.is_alive()
        d = lifeline.stat(daemon)
        assert d is not None and d[2] != "Z", (
            "the sweep terminated an unrelated daemon that took a remembered id"
        )
    finally:
        parent.kill()
        parent.wait()
        if daemon:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon, signal.SIGKILL)
