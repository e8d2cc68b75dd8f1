"""Review s23-rev-hub23 F2/F3: ``kvgate epp``'s check of ``--metrics-port`` before anything starts
(``check_bindable(..., any_address=False)``) modelled the metrics listener as asyncio's ``create_server``:
every address of a name bound, IPv6 ones v6-only. The listener (``EppMetrics.serve``) binds ONE socket, of
the family ``':' in host`` picks, to ``(host, port)``: a name binds its first IPv4 address, ``::`` binds
dual-stack. So ``--host localhost`` with ``::1 localhost`` in /etc/hosts and [::1]:port taken (or ::1 not
configured) was refused though its listener binds 127.0.0.1 (F2), and ``--host ::`` with the port held on
0.0.0.0 passed the check and failed later, at the listener (F3). Now both make the same bind
(``kvgate.extproc.ports.bind_one``).

Real sockets on loopback holding the port, the real metrics listener. The first two tests are the review's."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.ports import check_bindable


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback here")


def _listener_error(host: str, port: int) -> OSError | None:
    async def serve() -> OSError | None:
        try:
            runner, got = await EppMetrics().serve(host, port)
        except OSError as e:
            return e
        await runner.cleanup()
        assert got == port
        return None

    return asyncio.run(serve())


def _check_error(host: str, port: int) -> OSError | None:
    try:
        check_bindable(host, port, any_address=False)
    except OSError as e:
        return e
    return None


def test_the_metrics_check_binds_a_name_as_the_listener_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """F2. The usual /etc/hosts (``::1 localhost`` beside ``127.0.0.1 localhost``) emulated for Python's
    ``getaddrinfo`` (which the old check used), [::1]:port held v6-only: the listener binds 127.0.0.1."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "localhost":
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]  # fmt: skip
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with socket.socket(socket.AF_INET6) as v6:
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::1", 0))
        v6.listen()
        port = v6.getsockname()[1]
        assert _listener_error("localhost", port) is None
        check_bindable("localhost", port, any_address=False)  # (was EADDRINUSE)


def test_the_metrics_check_refuses_a_wildcard_the_listener_cannot_bind() -> None:
    """F3. ``::`` is bound dual-stack by the listener (no IPV6_V6ONLY; the kernel's default
    bindv6only=0), so a port held on 0.0.0.0 fails it; the check bound ``[::]`` v6-only and passed."""
    if Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() != "0":
        pytest.skip("bindv6only=1: [::] is v6-only by default here")
    with socket.socket() as v4:
        v4.bind(("0.0.0.0", 0))
        v4.listen()
        port = v4.getsockname()[1]
        assert _listener_error("::", port) is not None
        with pytest.raises(OSError):  # (passed before)
            check_bindable("::", port, any_address=False)


def _holder(family: socket.AddressFamily, addr: str, v6only: bool | None) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        s = socket.socket(family)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        s.bind((addr, 0))
        s.listen()
        return s

    return make


HOLDERS = {
    "v4-loopback": _holder(socket.AF_INET, "127.0.0.1", None),
    "v4-any": _holder(socket.AF_INET, "0.0.0.0", None),
    "v6-loopback": _holder(socket.AF_INET6, "::1", True),
    "v6only-any": _holder(socket.AF_INET6, "::", True),
    "dual-any": _holder(socket.AF_INET6, "::", False),
}


@pytest.mark.parametrize("held", list(HOLDERS))
def test_the_metrics_check_says_no_exactly_where_the_listener_fails(held: str) -> None:
    """Each host against each way of holding the port: the check refuses iff the real listener fails,
    with the same errno (a guard over both findings' rule)."""
    with HOLDERS[held]() as s:
        port = s.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0", "", "localhost", "::1", "::"):
            listener, check = _listener_error(host, port), _check_error(host, port)
            assert (listener and listener.errno) == (check and check.errno), (host, listener, check)
