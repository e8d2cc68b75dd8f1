"""Ports for servers started with a port given by number (peer routers, test doors), picked where no
port-0 bind lands.

A port got by binding port 0 and closing the socket is handed by the kernel to the next process binding
port 0 (any gRPC or HTTP server on a shared machine), and in the gap before our server binds it another
process's server may take it (session-25 CI #2). A port outside the kernel's ephemeral range
(``ip_local_port_range``) is given to no port-0 bind: only a process binding that very port by number
(another caller of this helper, say) can still take it. Where the server can report the port it bound,
``--port 0`` and reading it is better still (``kvgate epp``'s ready line, ``kvgate serve``'s listening
line)."""

from __future__ import annotations

import random
import socket
import warnings

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
# The team's fixed test ports (one range per engineer): never handed out here.
RESERVED = range(20000, 30000)
MIN_SPARE = 256  # fewer ports than this outside the ephemeral range: port-0 binds (``free_port``)


def spare_ports() -> list[int]:
    """The unprivileged ports outside the kernel's ephemeral range and ``RESERVED``: the ones above it when
    there are at least 1024 there (few services listen there), else those below and above it; empty with
    fewer than ``MIN_SPARE`` of them (a wide range such as ``1024 65535``, common in containers)."""
    try:
        with open(RANGE_FILE) as f:
            lo, hi = map(int, f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999  # (Linux's default)
    above = [p for p in range(max(hi + 1, 1024), 65536) if p not in RESERVED]
    if len(above) >= 1024:
        return above
    spare = [p for p in range(1024, lo) if p not in RESERVED] + above
    return spare if len(spare) >= MIN_SPARE else []


_SPARE = spare_ports()
_given: set[int] = set()  # (this process's: two calls never return the same port)


def free_port(spare: list[int] | None = None) -> int:
    """A 127.0.0.1 port nobody listens on now, picked at random from ``spare`` (``spare_ports()`` of
    this machine), never the same twice in a process. With no spare ports it falls back to binding port 0,
    the race above possible again, and says so (a ``RuntimeWarning``)."""
    ports = _SPARE if spare is None else spare
    if not ports:
        return _port_zero()
    rng = random.Random()  # (os.urandom's seed: not a caller's seeded ``random``)
    for _ in range(1000):
        port = rng.choice(ports)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # (in use, or in TIME_WAIT: another)
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port among {len(ports)} outside the ephemeral range ({RANGE_FILE})")


def _port_zero() -> int:
    warnings.warn(
        f"no ports outside the kernel's ephemeral range ({RANGE_FILE}): free_port binds port 0, and another "
        "process's port-0 bind may take the port before the server binds it (narrow the range to avoid it)",
        RuntimeWarning,
        stacklevel=3,
    )
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port
