"""Whether a listen address can be bound, found by binding it here first (then closing it at once).

gRPC's core logs a failed bind on its own (``add_port.cc: Failed to add port to server ...``) before its
Python error, so ``kvgate epp`` on a port in use printed that line before its own one-line refusal. The check
makes the same binds the listener would, with the same ``SO_REUSEADDR`` (a port held only by connections in
TIME_WAIT still binds) and no ``SO_REUSEPORT`` (the EPP's listeners set none), and says no only where the
listener would fail too; a port taken between the check and the listener's own bind is still refused, by the
listener (then after gRPC's line)."""

from __future__ import annotations

import socket

_WILDCARDS = ("", "0.0.0.0", "::")
_Addr = tuple[object, ...]


def check_bindable(host: str, port: int, *, any_address: bool) -> None:
    """Raises the ``OSError`` of a bind of ``host:port`` that the listener would fail too; returns when it
    would bind (or when this cannot tell: a name that does not resolve here is the listener's to refuse).
    ``any_address``: gRPC's rule, bound when one address binds (a wildcard is ``[::]`` dual-stack, else
    ``0.0.0.0``; a name, any of its addresses); else asyncio's ``create_server``, every address must bind.
    Port 0 (ephemeral) always binds."""
    if port == 0:
        return
    h = host.strip("[]")
    tries: list[tuple[socket.AddressFamily, _Addr, bool | None]]
    if any_address and h in _WILDCARDS:
        tries = [(socket.AF_INET6, ("::", port), False), (socket.AF_INET, ("0.0.0.0", port), None)]
    else:
        try:
            infos = socket.getaddrinfo(h or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError):
            return
        # (asyncio's create_server sets IPV6_V6ONLY on its IPv6 sockets)
        tries = [(f, a, True if f == socket.AF_INET6 else None) for f, _t, _p, _c, a in infos]
    errors = [e for f, a, v6only in tries if (e := _bind_error(f, a, v6only)) is not None]
    if errors and (len(errors) == len(tries) or not any_address):
        raise errors[0]


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
