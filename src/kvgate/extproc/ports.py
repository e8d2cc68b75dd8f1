"""Whether a listen address can be bound, found by binding it here first (then closing it at once).

gRPC's core logs a failed bind on its own (``add_port.cc: Failed to add port to server ...``) before its
Python error, so ``kvgate epp`` on a port in use printed that line before its own one-line refusal. The check
makes the same binds the listener would, with the same ``SO_REUSEADDR`` (a port held only by connections in
TIME_WAIT still binds) and no ``SO_REUSEPORT`` (the EPP's listeners set none), and says no only where the
listener would fail too; a port taken between the check and the listener's own bind is still refused, by the
listener (then after gRPC's line)."""

from __future__ import annotations

import errno
import socket

_WILDCARDS = ("0.0.0.0", "::")
_Addr = tuple[object, ...]


def check_bindable(host: str, port: int, *, any_address: bool) -> None:
    """Raises the ``OSError`` of a bind of ``host:port`` that the listener would fail too; returns when it
    would bind. ``any_address``: gRPC's rule, bound when one address binds (a wildcard is ``[::]``
    dual-stack, else ``0.0.0.0``; a name, any of its addresses); an empty host (gRPC: "host must not be
    empty") and a name that does not resolve (gRPC: "address lookup failed") bind nothing, whatever the port
    (review s23-rev-fix23a F3/F4: both were left to gRPC, which logged its line first, or to the metrics
    check, which refused under ``--metrics-port`` a host wrong for ``--port`` too). Else the metrics
    listener's own bind, ``bind_one`` (review s23-rev-hub23 F2/F3: it was modelled as asyncio's
    ``create_server``, every address of a name bound, IPv6 ones v6-only). Port 0 (ephemeral) is bound as
    well by the gRPC check: an address this host lacks fails it too (``EADDRNOTAVAIL``; review
    s24-rev-fix24 F3: it passed, and gRPC's line came first)."""
    if not any_address:
        if port:
            bind_one(host, port).close()
        return
    tries = _grpc_addresses(host, port)
    errors = [e for f, a, v6only in tries if (e := _bind_error(f, a, v6only)) is not None]
    if errors and len(errors) == len(tries):
        raise errors[0]


def _grpc_addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, _Addr, bool | None]]:
    """The (family, address, IPV6_V6ONLY) binds gRPC's core tries for ``host:port``, one of which must
    succeed; ``OSError`` where it tries none."""
    h = host.strip("[]")
    if not h:
        raise OSError(errno.EINVAL, "host must not be empty")
    if h in _WILDCARDS:
        return [(socket.AF_INET6, ("::", port), False), (socket.AF_INET, ("0.0.0.0", port), None)]
    try:
        infos = socket.getaddrinfo(h, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except UnicodeError as e:  # (a name IDNA cannot encode: no lookup, as gRPC's fails)
        raise OSError(errno.EINVAL, f"address lookup failed: {e}") from e
    # (gRPC's IPv6 sockets are dual-stack: its core sets IPV6_V6ONLY 0 where it can)
    return [(f, a, False if f == socket.AF_INET6 else None) for f, _t, _p, _c, a in infos]


def bind_one(host: str, port: int) -> socket.socket:
    """The metrics listener's socket (``EppMetrics.serve``), bound and not listening; the caller closes it.
    ONE socket: IPv6 when ``host`` has a ``:`` (``::`` dual-stack, the kernel's default, no
    ``IPV6_V6ONLY``), else IPv4 (a name: its first IPv4 address); ``SO_REUSEADDR``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_error(family: socket.AddressFamily, addr: _Addr, v6only: bool | None) -> OSError | None:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:  # (a family this host lacks)
        return e
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if v6only is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            sock.bind(addr)
        except OSError as e:
            return e
    return None
