"""Closing note s22: ``kvgate epp`` with a listen port in use printed gRPC's core log line (``E...
add_port.cc: Failed to add port to server: ... Address already in use``) before its own one-line refusal,
and the metrics scraper's first round had already started and logged its own warnings. Now the ports are
checked first, by binding them as the listeners would (``kvgate.extproc.ports``): the user sees the one
line alone (beside INFO start-up logs, the hub's policy and seed). The refusal's reason is the bind's own
(``[Errno 98] Address already in use``). The hub's ``--metrics-port`` case passed before (a guard: its
feed logs its failed fetches at DEBUG).

Real subprocesses (the pod EPP and the hub EPP, ``--clusters``), a loopback listener holding the port."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvgate.bench.ports import free_port

KVGATE = [sys.executable, "-m", "kvgate.cli"]
FLAGS = ("--port", "--grpc-health-port", "--metrics-port")


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # it exits on its own (its start fails); the timeout only bounds a hang
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _one_line(res: subprocess.CompletedProcess[str], *names: str) -> None:
    assert res.returncode == 1, res.stderr[-1500:]
    lines = [ln for ln in res.stderr.splitlines() if " INFO " not in ln]
    assert len(lines) == 1, f"{len(lines)} lines, not the refusal alone:\n{res.stderr[-1500:]}"
    assert lines[0].startswith("kvgate epp: cannot start: "), lines
    assert all(n in lines[0] for n in names), lines
    assert "Address already in use" in lines[0], lines


@pytest.mark.parametrize("hub", [False, True], ids=["pod", "hub"])
@pytest.mark.parametrize("flag", FLAGS)
def test_a_port_in_use_is_the_refusal_alone(tmp_path: Path, taken: int, flag: str, hub: bool) -> None:
    if hub:
        f = tmp_path / "clusters.yaml"
        f.write_text("clusters:\n- name: east\n  aggregate: http://127.0.0.1:9/v1/pool/aggregate\n"
                     "  gateway: 127.0.0.1:9\n  health: 127.0.0.1:9\n")  # fmt: skip
        argv = [*KVGATE, "epp", "--clusters", str(f), "--plaintext"]
    else:  # (an endpoint that refuses: the scraper's first round would warn)
        argv = [*KVGATE, "epp", "--endpoints", "127.0.0.1:9", "--plaintext"]
    for k in FLAGS:
        argv += [k, str(taken) if k == flag else "0"]
    _one_line(_run(argv), flag, str(taken))


def test_the_same_port_for_two_listeners_is_the_refusal_alone() -> None:
    # (a free port, taken by the EPP's own first listener: outside the ephemeral range, so no other
    # process's port-0 bind takes it first and the refusal names --port; kvgate.bench.ports)
    port = str(free_port())
    argv = [*KVGATE, "epp", "--endpoints", "127.0.0.1:9", "--plaintext", "--port", port,
            "--grpc-health-port", port, "--metrics-port", "0"]  # fmt: skip
    _one_line(_run(argv), "--grpc-health-port", port)


def test_the_check_refuses_only_what_the_listener_would() -> None:
    """gRPC binds a wildcard as ``[::]`` dual-stack, else ``0.0.0.0``: a port held by an IPv6-only socket
    still binds there (gRPC takes it on IPv4), so the check must not refuse it. (A guard of the check
    itself, new here.)"""
    from kvgate.extproc.ports import check_bindable

    with socket.socket(socket.AF_INET6) as v6:
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::", 0))
        v6.listen()
        port = v6.getsockname()[1]
        check_bindable("0.0.0.0", port, any_address=True)  # (no error)
        with pytest.raises(OSError):
            check_bindable("::", port, any_address=False)
    with socket.socket() as v4:
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        port = v4.getsockname()[1]
        for host in ("0.0.0.0", "127.0.0.1", "[::]"):
            with pytest.raises(OSError):
                check_bindable(host, port, any_address=True)
        check_bindable("127.0.0.1", 0, any_address=True)  # (ephemeral)
