"""Review s19-gw L1 (3bc20a5): "kvgate sim's --base-port, --kv-events-port, --control-port checked as ports"
checks the flag's own value only; the ports derived from it are not. ``--base-port 65535 --replicas 2``
prints "replica 1: http://127.0.0.1:65536", "serving 2 x sim-model" and serves one (exit 0 at the end of
--duration); ``--kv-events-port 65535`` (replica 0's replay ROUTER on P+1 = 65536) is a ZMQError traceback.

Both failed before the fix (903ccbe), pass after.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "flags",
    [
        ["--base-port", "65535", "--replicas", "2"],
        ["--base-port", "0", "--kv-events-port", "65535"],
    ],
    ids=["base-port+replicas", "kv-events-port+1"],
)
def test_a_derived_port_past_65535_is_refused_naming_the_flag(flags: list[str]) -> None:
    cmd = [sys.executable, "-m", "kvgate.cli", "sim", *flags, "--duration", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout[-300:], r.stderr[-600:])
    assert len(lines) == 1 and any(f in lines[0] for f in flags if f.startswith("--")), r.stderr[-600:]
