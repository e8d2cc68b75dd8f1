"""tst28 (session 27's closing note): ``python -m kvgate.bench.simproc --kv-events-offset N`` picked a
replica's port ``p`` by binding port 0 and closing it, then bound ``p``, ``p + N`` and ``p + 2N`` by number.
``p`` is ephemeral, but ``p + N`` can be a spare port (above the ephemeral range) that another process's
``kvgate.bench.ports.free_port`` has handed out and claimed: the simulator took it before that server's
bind. Every spare port of the three is now claimed machine-wide while it lives (``free_port_group``'s
spare group where one fits). Checked with the bench's offset (1000) and one too wide for a spare group
(15000: on a machine with Linux's default range, ``p + 2N`` is spare whatever ``p``). The wide one fails on
2a9ab840 (the spare port unclaimed: this process could claim it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.bench import ports
from start_lines import ports as start_ports

REPLICA = re.compile(r"replica 0 http://127\.0\.0\.1:(\d+)(?=\D)")


@pytest.mark.parametrize("offset", [1000, 15000])  # (live_fleet.KV_EVENTS_OFFSET; a wide one)
def test_a_simulated_replicas_spare_ports_are_claimed_while_it_lives(tmp_path: Path, offset: int) -> None:
    spare = set(ports.spare_ports())
    if not spare:
        pytest.skip("no ports outside this machine's ephemeral range")
    out = tmp_path / "simproc.out"
    cmd = [sys.executable, "-m", "kvgate.bench.simproc", "--replicas", "1", "--profile", "tiny",
           "--kv-events-offset", str(offset)]  # fmt: skip
    with out.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.DEVNULL)
    try:
        (port,) = start_ports(out, REPLICA, proc)
        group = [port, port + offset, port + 2 * offset]
        claimed_here = [p for p in group if p in spare and ports.claim(p)]
        for p in claimed_here:
            ports._release(p)
        assert claimed_here == [], f"the simulator's ports {group}: spare {claimed_here} left free to claim"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
