"""Review s22-qa F3: `kvgate epp` with a listen port already taken dies in a 33-46 line traceback (grpc's
"Failed to bind", then "Unclosed client session", "Event loop is closed", "coroutine 'AioServer.shutdown'
was never awaited"); `kvgate serve` says one line, `kvgate serve: cannot start: ... address already in use`.
In a pod that is the CrashLoopBackOff log an operator reads (review s22-qa.md F3)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

KVGATE = [sys.executable, "-m", "kvgate.cli"]


@pytest.fixture(params=[False, True], ids=["plain", "reuseport"])
def taken(request: pytest.FixtureRequest) -> Iterator[int]:
    """A listening port; ``reuseport``: held with SO_REUSEPORT, as another gRPC server holds its port (gRPC
    sets it by default, so an EPP bound beside it and shared its connections, never failing)."""
    s = socket.socket()
    if request.param:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", 0))
    s.listen()
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


@pytest.mark.parametrize("flag", ["--port", "--grpc-health-port", "--metrics-port"])
def test_epp_port_in_use_is_one_line_naming_the_port(taken: int, flag: str) -> None:
    # (the other listeners on port 0: a port picked free and closed here could be taken by another process
    # before the EPP binds it, and the refusal would name that flag)
    ports = {"--port": 0, "--grpc-health-port": 0, "--metrics-port": 0, flag: taken}
    argv = [*KVGATE, "epp", "--endpoints", "127.0.0.1:9", "--plaintext"]
    for k, v in ports.items():
        argv += [k, str(v)]
    # it exits on its own (the bind fails at start); the timeout only bounds a hang
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"kvgate epp started on {flag} {taken}, a port in use") from e
    assert "Traceback" not in res.stderr, f"a traceback for a port in use ({flag}):\n{res.stderr[-1500:]}"
    assert res.returncode == 1  # (as kvgate serve for a port in use)
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("kvgate epp: cannot start: ")]
    assert len(line) == 1 and flag in line[0] and str(taken) in line[0], res.stderr[-1500:]
    # what started before the bind (the scraper's session, the other listeners) was stopped, not dropped
    for noise in ("Unclosed", "never awaited", "Event loop is closed"):
        assert noise not in res.stderr, res.stderr[-1500:]
