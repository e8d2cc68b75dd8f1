"""Session-25 CI #2: ``free_port`` (the tests' helper for the ports of the servers they start) bound port 0
and closed the socket; the kernel hands that port to the next process binding port 0, and on the shared
machine another process's gRPC server took it before the test's ``kvgate serve`` bound it (its admin
``/readyz`` answered with an HTTP/2 SETTINGS frame). The helper now picks outside the kernel's ephemeral
range, which no port-0 bind is given, and never the same port twice in a process. Fails on main 6c4d40fa
(its ports come from the ephemeral range)."""

from __future__ import annotations

import socket

from gateway.backend import free_port


def test_free_ports_are_outside_the_ephemeral_range_and_distinct() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if lo <= p <= hi], (lo, hi, ports)
    assert not [p for p in ports if 20000 <= p < 30000]  # (the team's fixed test ports)
    # (free now: a server can bind it. No port-0 bind can land on one: that is the range check above; a
    # bind here could not fail once it passes: review s26-rev-gw26 F4)
    with socket.socket() as a:
        a.bind(("127.0.0.1", ports[0]))
