"""flake27: two processes drawing ``free_port`` from the same spare ports (two test runs side by side on the
shared machine: CI beside an engineer's run) were free to hand out the same port, each checked free by a
bind it then closed, and the two servers given it raced for its bind (the loser failed to start, or a test
talked to the other run's server). A port given out is now claimed machine-wide while its process lives.
Fails on 6782b99d (the other process's port is handed out again)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from kvgate.bench import ports

_HOLD = """import sys
from kvgate.bench import ports
print(ports.free_port([int(sys.argv[1])]), flush=True)
sys.stdin.read()  # (holds the claim until the test closes stdin)
"""


def _holder(port: int) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().strip() == str(port)
    return child


def _a_spare_port() -> int:
    """A spare port free now and claimed by nobody (this process's claim let go again), not in its
    ``_given``. (Before the claims: one free now.)"""
    claim, release = getattr(ports, "claim", lambda _p: True), getattr(ports, "_release", lambda _p: None)
    for port in ports.spare_ports() or range(40000, 41000):
        if port in ports._given or not claim(port):
            continue
        release(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no spare port")


def test_a_port_another_live_process_was_given_is_not_given_again() -> None:
    port = _a_spare_port()
    child = _holder(port)
    try:
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_port([port])  # (free to bind: only the other process's claim says no)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)
    assert ports.free_port([port]) == port  # (the claim ended with its process)


def test_a_port_group_is_spare_free_claimed_and_never_given_twice() -> None:
    """The real-vLLM suite's ports (``tests/realvllm/conftest.py``): a server's port and its KV-event ports
    at +1000 and +2000, all spare (outside the ephemeral range), each given once, each claimed here."""
    spare = ports.spare_ports()
    if not spare:
        pytest.skip("no ports outside this machine's ephemeral range")
    firsts = [ports.free_port_group(1000) for _ in range(3)]
    group = [p + k * 1000 for p in firsts for k in range(3)]
    assert 0 not in firsts and len(set(group)) == 9, firsts
    assert set(group) <= set(spare), group
    assert set(group) <= ports._given and set(group) <= set(ports._claims), group
    child = subprocess.run([sys.executable, "-c", "from kvgate.bench import ports; import sys;"
                            "print(all(not ports.claim(int(p)) for p in sys.argv[1:]))", *map(str, group)],
                           capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert child.stdout.strip() == "True", child.stdout  # (another process is refused each one)
    assert ports.free_port_group(1000, spare=[]) == 0
