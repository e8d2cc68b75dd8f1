"""Review s16-hard (hub probe, 6cc56dd, I4): "a port past 65535 is a failed probe" holds for an address
(``sock_connect`` raises OverflowError) but not for a host name: ``socket.getaddrinfo(host, 73616)``
hands glibc the service "73616", which it truncates to 16 bits (73616 - 65536 = 8080), and the probe
connects to port 8080. A gateway written ``gw:73616`` (the clusters file checks no range) is then judged
up by whatever listens on ``port - 65536``. The repo's ``localhost:70000`` case passes only because
nothing listens on 4464. Fails on main."""

from __future__ import annotations

import asyncio

import pytest

from kvgate.multicluster.clusters import ClustersError, parse
from kvgate.multicluster.hub import connects


async def test_a_port_past_65535_is_down_for_a_host_name_too() -> None:
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        assert await connects(f"localhost:{port}", 0.5)  # (control: the listener itself)
        assert not await connects(f"127.0.0.1:{port + 65536}", 0.5)  # (an address: down, as claimed)
        assert not await connects(f"localhost:{port + 65536}", 0.5)  # a host name: connected to `port`
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gateway", "gw:73616"),
        ("epp", "gw:0"),
        ("health", "gw:80x"),
        ("gateway", "[::1]:65536"),
        ("epp", ":9002"),
    ],
)
def test_the_clusters_file_refuses_a_port_out_of_range(key: str, value: str) -> None:
    """The clusters file names the key whose port is not 1-65535 (it took any ``host:port`` before)."""
    with pytest.raises(ClustersError) as e:
        parse({"clusters": [{"name": "a", "gateway": "gw:8080", key: value}]})
    assert e.value.key == f"clusters[0].{key}"


@pytest.mark.parametrize("value", ["gw:65535", "[::1]:1", "http://gw:8080/", "10.0.0.1:443"])
def test_the_clusters_file_takes_a_port_in_range(value: str) -> None:
    assert parse({"clusters": [{"name": "a", "gateway": value}]}).clusters[0].gateway == value.removeprefix(
        "http://"
    ).rstrip("/")
