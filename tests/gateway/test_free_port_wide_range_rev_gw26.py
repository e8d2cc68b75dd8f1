"""Review s26-rev-gw26 F4: ``free_port``'s fallback when fewer than 1024 ports lie above the kernel's
ephemeral range was ``range(10000, 20000)``, whatever the range's low end: with a wide
``ip_local_port_range`` (``1024 65535``, a common container/Kubernetes sysctl; ``1024 64999``;
``15000 64600``) those ports were inside it, so port-0 binds landed on them again (session-25 CI #2's race,
back silently). The spare ports are now those outside the range (below it too, never the team's
20000-29999); with too few of them there are none, and ``free_port`` binds port 0 and says so. ``/proc``'s
file is patched for the read only (the machine's own range is left alone). Fail on 530ec4f1 (its
``range(10000, 20000)``; no ``kvgate.bench.ports``)."""

from __future__ import annotations

import builtins
import io
import socket
from typing import Any

import pytest

from gateway import backend


@pytest.mark.parametrize(
    ("wide", "none_outside"),
    [("1024\t65535\n", True), ("1024\t64999\n", False), ("15000\t64600\n", False)],
)
def test_spare_ports_stay_outside_a_wide_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch, wide: str, none_outside: bool
) -> None:
    real_open = builtins.open

    def fake_open(path: Any, *a: Any, **kw: Any) -> Any:
        if str(path) == "/proc/sys/net/ipv4/ip_local_port_range":
            return io.StringIO(wide)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    lo, hi = map(int, wide.split())
    spare = list(backend._spare_ports())
    inside = [p for p in spare if lo <= p <= hi]
    assert not inside, (wide.split(), inside[:5], len(inside))
    assert not [p for p in spare if 20000 <= p < 30000 or p < 1024]
    # (1024 65535: no port outside it, none pretended; the others have hundreds or thousands)
    assert (not spare) is none_outside, (wide.split(), len(spare))


def test_no_spare_ports_falls_back_to_port_zero_and_says_so() -> None:
    from kvgate.bench import ports

    with pytest.warns(RuntimeWarning, match="ephemeral range"):
        got = [ports.free_port([]) for _ in range(3)]
    assert len(set(got)) == 3  # (never the same twice in a process)
    with socket.socket() as s:
        s.bind(("127.0.0.1", got[0]))  # (free: a server can bind it)
