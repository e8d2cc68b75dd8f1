"""rev-c28 F4: upstream sockets bound unacknowledged data too (TCP_USER_TIMEOUT), not only idle time.

Keepalive probes go out only while nothing sent is unacknowledged: a request written to a host already
gone (no FIN) lived on the retransmission timer (tcp_retries2 = 15: ~15 min), not the ~2 min
docs/gateway.md says. Fails on 382a505c (Linux).
"""

from __future__ import annotations

import socket

import pytest

from kvgate.gateway import upstream


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_upstream_sockets_bound_unacknowledged_data_too() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        cli = socket.create_connection(srv.getsockname())
        try:
            upstream._keepalive(cli)
            assert cli.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle, interval, probes = upstream.KEEPALIVE
            got = cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert got == (idle + interval * probes) * 1000, "a request into a vanished host waits ~15 min"
        finally:
            cli.close()
    finally:
        srv.close()
