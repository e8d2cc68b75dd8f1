"""Ports for servers started with a port given by number (peer routers, test doors), picked where no
port-0 bind lands.

A port got by binding port 0 and closing the socket is handed by the kernel to the next process binding
port 0 (any gRPC or HTTP server on a shared machine), and in the gap before our server binds it another
process's server may take it (session-25 CI #2). A port outside the kernel's ephemeral range
(``ip_local_port_range``) is given to no port-0 bind: only a process binding that very port by number
(another caller of this helper, say) can still take it. Where the server can report the port it bound,
``--port 0`` and reading it is better still (``kvgate epp``'s ready line, ``kvgate serve``'s listening
line).

Two processes on one machine (two test runs side by side, or CI beside an engineer's run) draw from the same
spare ports: each port handed out is claimed machine-wide (an ``flock`` on a file named by it, under
``CLAIMS``) for as long as the process lives (or ``CLAIMS_HELD`` later claims), and a port another live
process claimed is never handed out, so two servers are never given one port to race for."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import random
import socket
import tempfile
import warnings

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
# The team's fixed test ports (one range per engineer): never handed out here.
RESERVED = range(20000, 30000)
MIN_SPARE = 256  # fewer ports than this outside the ephemeral range: port-0 binds (``free_port``)
CLAIMS = os.path.join(tempfile.gettempdir(), "kvgate-free-ports")
CLAIMS_HELD = 256  # (a claim older than this many is let go: its server has bound the port long since)


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
_claims: collections.OrderedDict[int, int] = collections.OrderedDict()  # port -> the locked file's fd


def claim(port: int) -> bool:
    """Whether this process now holds ``port``'s machine-wide claim (False: another live process holds
    it). Where the claims' folder cannot be written, True: only the in-process rule is left."""
    path = os.path.join(CLAIMS, str(port))
    try:
        os.makedirs(CLAIMS, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(CLAIMS, 0o1777)  # (other users' runs claim there too)
        try:  # (read-only: flock needs no write access, so another user's file locks too; without O_CREAT
            # first: fs.protected_regular refuses O_CREAT on another user's file in a sticky folder)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _claims[port] = fd
    while len(_claims) > CLAIMS_HELD:
        os.close(_claims.popitem(last=False)[1])
    return True


def _release(port: int) -> None:
    if (fd := _claims.pop(port, None)) is not None:
        os.close(fd)


def release(port: int) -> None:
    """Hand back ``port``, taken (``claim``, ``free_port_group``) but given to no server after all (its group
    incomplete, its server's bind failed): claimed no more, and this process may hand it out again."""
    _given.discard(port)
    _release(port)


def free_port(spare: list[int] | None = None) -> int:
    """A 127.0.0.1 port nobody listens on now, picked at random from ``spare`` (``spare_ports()`` of
    this machine), never the same twice in a process nor one another live process was given (``claim``).
    With no spare ports it falls back to binding port 0, the race above possible again, and says so (a
    ``RuntimeWarning``)."""
    ports = _SPARE if spare is None else spare
    if not ports:
        return _port_zero()
    rng = random.Random()  # (os.urandom's seed: not a caller's seeded ``random``)
    for _ in range(1000):
        port = rng.choice(ports)
        if _take(port):
            return port
    raise RuntimeError(f"no free port among {len(ports)} outside the ephemeral range ({RANGE_FILE})")


def free_port_group(spread: int, size: int = 3, spare: list[int] | None = None) -> int:
    """A port ``p`` with ``p``, ``p + spread``, ... (``size`` ports) each as ``free_port`` gives one:
    spare, free now, claimed here (a server with side ports at fixed offsets: vLLM's KV-event ports). With
    no spare ports: 0 (the caller picks its own way)."""
    ports = _SPARE if spare is None else spare
    usable = set(ports)
    firsts = [p for p in ports if all(p + k * spread in usable for k in range(size))]
    rng = random.Random()
    for _ in range(1000 if firsts else 0):
        first = rng.choice(firsts)
        group = [first + k * spread for k in range(size)]
        got: list[int] = []
        for port in group:
            if not _take(port):
                break
            got.append(port)
        if len(got) == size:
            return group[0]
        for port in got:  # (not handed out: the group is incomplete)
            release(port)
    return 0


def _take(port: int) -> bool:
    """Whether ``port`` is now this process's to hand out: not given before, claimed, free to bind."""
    if port in _given or not claim(port):  # (claimed before the bind: two callers never both pass)
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:  # (in use, or in TIME_WAIT: another)
            _release(port)
            return False
    _given.add(port)
    return True


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
        if port not in _given and claim(port):
            _given.add(port)
            return port
