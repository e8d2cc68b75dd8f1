"""A watchdog *without* ``tree`` (``kvgate.realvllm``'s: ``start_watchdog(tree=False)``, its process not a
subreaper) keeps a remembered group whose leader ended while any process is left in it: a member never
listed (forked between listings) is re-parented to init (or another subreaper), so it is not "covered",
yet it is ours, and the sweep takes it. fixhard15 (a634666) had applied the tree watchdog's rule (kept
only while the leader runs or a *covered* process is in the group) to both: that member survived the
sweep (review s15-fixes-a L1; this test is the reviewer's, failed on ca1e66d).

The watchdog loop runs in a thread of the test (as tests/bench/test_lifeline_led_reuse.py), listing only
when asked. No root needed.
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

from kvgate import lifeline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

# The watched group's leader W: forks L, which makes a group of its own (setsid) and waits for a line;
# then L forks Y (stays in L's group, never listed) and exits. W collects L and waits.
_W = r"""
import os, sys, time
l = os.fork()
if l == 0:
    os.setsid()
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    y = os.fork()
    if y == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(600)
        os._exit(0)
    print(y, flush=True)
    os._exit(0)
os.waitpid(l, 0)
time.sleep(600)
"""


def counted_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``[n]``: the /proc snapshots (``lifeline.scan``) taken from now on, counted."""
    scans = [0]
    real_scan = lifeline.scan

    def counted() -> dict[int, lifeline.Stat]:
        table = real_scan()
        scans[0] += 1
        return table

    monkeypatch.setattr(lifeline, "scan", counted)
    return scans


class _Counted:
    """The watch loop's end of the socket; remembers how many /proc snapshots were taken when it last
    answered."""

    def __init__(self, sock: socket.socket, scans: list[int]) -> None:
        self.sock, self.scans, self.sent_at = sock, scans, 1 << 30

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sent_at = self.scans[0]
        self.sock.sendall(data)


def _ask(sock: socket.socket, msg: bytes, n: int) -> None:
    """``msg`` and a sync ``n`` to the watch loop; returns once it answered the sync."""
    sock.sendall(msg + b"s%d\n" % n)
    sock.settimeout(10)
    buf = b""
    while b"k%d\n" % n not in buf:
        data = sock.recv(4096)
        assert data, "the watch loop closed its socket"
        buf += data


def _settle(scans: list[int], theirs: _Counted) -> None:
    """Waits (up to 30 s: a thread on a loaded machine; 10 s before) for the loop's listing after its last
    answer to have its snapshot."""
    deadline = time.monotonic() + 30
    while scans[0] <= theirs.sent_at and time.monotonic() < deadline:  # (the listing after the answer)
        time.sleep(0.001)


@pytest.mark.parametrize("tree", [False, True], ids=["tree_false", "tree_without_subreaper"])
def test_tree_false_watchdog_sweeps_an_unlisted_member_of_a_led_group_whose_leader_ended(
    monkeypatch: pytest.MonkeyPatch, tree: bool
) -> None:
    """(``tree_without_subreaper``: review s16-hard I2. A ``tree`` watchdog whose process is not a
    subreaper, ``become_subreaper`` having failed, applied the covered-only rule, which rests on the
    orphans being re-parented to it: Y, re-parented to init, survived. Now it is told, ``subreaper=``,
    and keeps the group as one without ``tree`` does.)"""
    scans = counted_scans(monkeypatch)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    w = subprocess.Popen([sys.executable, "-c", _W], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, start_new_session=True)  # fmt: skip
    y = 0
    try:
        assert w.stdout is not None and w.stdin is not None
        leader = int(w.stdout.readline())
        st = lifeline.stat(parent.pid)
        assert st is not None
        ours, raw = socket.socketpair()
        theirs = _Counted(raw, scans)
        watcher = threading.Thread(
            target=lifeline.watch, args=(parent.pid, st[3], theirs, 0.3, 600.0, tree), daemon=True
        )
        watcher.start()
        _ask(ours, b"g%d\n" % w.pid, 1)  # watch W's group; a listing: W and L (leading group L) covered
        _settle(scans, theirs)
        w.stdin.write("go\n")
        w.stdin.flush()
        y = int(w.stdout.readline())
        deadline = time.monotonic() + 60
        while lifeline.stat(leader) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        ys = lifeline.stat(y)
        assert ys is not None and ys[1] == leader and lifeline.stat(leader) is None  # L gone, Y in group L
        _ask(ours, b"", 2)  # a listing: group L has a live member (Y, not covered: re-parented away)
        _settle(scans, theirs)
        parent.kill()  # the watched process ends: the sweep
        parent.wait()
        watcher.join(timeout=60)
        assert not watcher.is_alive()
        ys = lifeline.stat(y)
        assert ys is None or ys[2] == "Z", "a member of a remembered group (leader ended) survived the sweep"
    finally:
        for p in (parent, w):
            p.kill()
            p.wait()
        if y:
            with contextlib.suppress(ProcessLookupError):
                os.kill(y, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(y, os.WNOHANG)
