"""Socket options shared by the connections that must notice a peer gone without a FIN (this module
imports no kvgate package, so every package may use it)."""

from __future__ import annotations

import socket


def tcp_keepalive(sock: socket.socket, idle: int, interval: int, probes: int) -> None:
    """TCP keepalive on ``sock``: the first probe after ``idle`` s, then every ``interval`` s, ``probes``
    of them (Linux; elsewhere the OS defaults, hours, apply), and ``TCP_USER_TIMEOUT`` at the same total:
    keepalive probes only go out while nothing is outstanding, so data written to a host already gone
    would otherwise wait on the retransmission timer (tcp_retries2: ~15 min). Raises ``OSError`` as
    ``setsockopt`` does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (idle + interval * probes) * 1000)
