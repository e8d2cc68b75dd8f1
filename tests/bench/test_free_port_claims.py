"""flake27: two processes drawing ``free_port`` from the same spare ports (two test runs side by side on the
shared machine: CI beside an engineer's run) were free to hand out the same port, each checked free by a
bind it then closed, and the two servers given it raced for its bind (the loser failed to start, or a test
talked to the other run's server). A port given out is now claimed machine-wide while its process lives.
Fails on 6782b99d (the other process's port is handed out again)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvgate.bench import ports

_HOLD = """import sys
from kvgate.bench import ports
print(ports.free_port(), flush=True)
sys.stdin.read()  # (holds the claim until the test closes stdin)
"""


def test_a_port_another_live_process_was_given_is_not_given_again() -> None:
    """The other process's own pick (random, claimed: two runs of this test side by side never share it,
    review s27-rev-a27 F2) is refused here while it lives, and claimable once it has exited."""
    if not ports.spare_ports():
        pytest.skip("no ports outside this machine's ephemeral range")
    child = subprocess.Popen([sys.executable, "-c", _HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_port([port])  # (free to bind: only the other process's claim says no)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)
    assert ports.claim(port)  # (the claim ended with its process; no bind: another may use the port now)
    ports._release(port)


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
