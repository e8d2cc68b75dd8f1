"""Review rev-a34 F3: the hub EPP's duplicate check compares gateways as the hub looks them up. A name is
looked up in its IDNA form (``idna_host``: ``bücher.example`` is ``xn--bcher-kva.example``), and a host
``ipaddress`` calls a name but the resolver reads as an IPv4 address (``127.1``, ``2130706433``,
``0x7f.0.0.1``: glibc's inet_aton forms) names that address. Before, both spellings loaded, resolved to one
``ip:port``, and one cluster was never picked (the WARNING path)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kvgate.multicluster.clusters import ClustersError, ClustersFile, idna_host
from kvgate.multicluster.hub import hub_check


def _load(tmp_path: Path, a: str, b: str) -> ClustersFile:
    f = tmp_path / "clusters.yaml"
    f.write_text(f"clusters:\n- {{name: east, gateway: '{a}'}}\n- {{name: west, gateway: '{b}'}}\n")
    return ClustersFile(f, check=hub_check)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("bücher.example:8080", "xn--bcher-kva.example:8080"),
        ("BÜCHER.example:8080", "xn--bcher-kva.example:8080"),
        ("127.0.0.1:8080", "127.1:8080"),
        ("127.0.0.1:8080", "2130706433:8080"),
        ("127.0.0.1:8080", "0x7f.0.0.1:08080"),
        ("[::ffff:127.0.0.1]:8080", "127.1:8080"),
    ],
)
def test_two_spellings_the_hub_looks_up_as_one_are_refused(tmp_path: Path, a: str, b: str) -> None:
    with pytest.raises(ClustersError) as got:
        _load(tmp_path, a, b)
    assert got.value.key == "clusters[1].gateway" and "east" in str(got.value), got.value


@pytest.mark.parametrize("numeric", ["127.1", "2130706433", "0x7f.0.0.1"])
def test_the_resolver_reads_those_hosts_as_the_address(numeric: str) -> None:
    """What makes them one gateway: the hub's lookup (getaddrinfo) answers 127.0.0.1 for each, with no name
    server asked (a numeric host)."""
    got = socket.getaddrinfo(numeric, 8080, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    assert {a[4][0] for a in got} == {"127.0.0.1"}
    assert idna_host("BÜCHER.example").lower() == idna_host("bücher.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("bücher.example:8080", "bucher.example:8080"),
        ("127.1:8080", "127.0.0.1:8081"),
        ("127.1:8080", "127.0.0.2:8080"),
        ("127.0.0.1:8080", "127.0.0.1.:8080"),  # (a trailing dot: a name, as a search domain may read it)
    ],
)
def test_other_addresses_are_taken(tmp_path: Path, a: str, b: str) -> None:
    assert [c.name for c in _load(tmp_path, a, b).config.clusters] == ["east", "west"]
