"""The gateway a tree runs for the scripts that measure it from outside over raw sockets
(``abandoned_bodies_rss.py``, ``honest_big_wait.py``): ``kvgate bench gateway-overhead``'s instant backend
on PORT and one ``kvgate serve`` (round robin, ``--kv-events off``, ``--log-level WARNING``) on PORT + 1 in
front of it, both on SRC's ``kvgate`` (``PYTHONPATH``), both killed at the end; and an unrouted body."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parse_stall as ps

from kvgate import lifeline


@contextmanager
def tree_gateway(src: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The backend on ``port`` and the gateway on ``port + 1``, from ``src``, the gateway ready: its
    process (its ``pid`` for its memory)."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    py = sys.executable
    backend = subprocess.Popen(
        lifeline.die_with_parent_argv([py, "-m", "kvgate.bench.gateway_overhead", "--_backend", str(port)]),
        env=env,
        stdout=subprocess.PIPE,
    )
    procs = [backend]
    try:
        argv = [py, "-m", "kvgate.cli", "serve", "--endpoints", f"127.0.0.1:{port}", "--model", "m"]
        argv += ["--policy", "round-robin", "--kv-events", "off", "--port", str(port + 1)]
        gateway = subprocess.Popen(lifeline.die_with_parent_argv([*argv, "--log-level", "WARNING"]), env=env)
        procs.insert(0, gateway)
        assert backend.stdout is not None and backend.stdout.readline().strip() == b"ready"
        ps._wait_ready(port + 1)
        yield gateway
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def unrouted(body: bytes) -> bytes:
    """``body`` (``parse_stall._big``'s, model ``m``) naming a model no pool serves: a 404 after its whole
    parse, never read by the backend."""
    return body.replace(b'"model":"m"', b'"model":"unrouted"', 1)
