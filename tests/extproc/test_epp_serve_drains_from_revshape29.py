"""Review s29-rev-shape29 F2 (test gap): the hub EPP's real ``_serve`` names its drain's source
(``grace_from``) and takes the clusters file's ``limits.drainTimeoutSeconds`` at the stop (``_file_drain``)
from its ``drain_from`` argument. 3ac25ce5's tests replace ``_serve`` and read the argument it would be
given; nothing ran the real ``_serve`` with it, so a ``_serve`` that ignored ``drain_from`` (the stop keeping
the flag's default, a reload's drain lost: review s28-rev-b28 F2 again) passed every test. Here the real
``_serve`` runs with a stand-in server (nothing bound) that, once started, stops it as SIGTERM does.

The SIGTERM goes to this (pytest's) process, so it is sent only once ``_serve``'s loop has its handler in
(otherwise the stand-in raises and sends nothing); the process's SIGINT / SIGTERM / SIGHUP dispositions are
put back afterwards. The stop waits on nothing timed (the clusters' dead aggregates are never waited for).

Passes on main d5eaf706; fails on a mutant whose ``_serve`` passes ``DRAIN_FLAG`` for ``drain_from``
(``[('grace_from', '--drain-timeout'), ('stop', None)]``)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvgate.extproc.cli as epp_cli
import kvgate.extproc.server as server_module

DEAD = "{name: a, aggregate: 'http://127.0.0.1:9/v1/pool/aggregate', gateway: '127.0.0.1:9'}"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture
def dispositions_kept() -> Iterator[None]:
    """The process's signal dispositions as they were (the loop's close leaves SIG_DFL behind)."""
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch, dispositions_kept: None) -> list[tuple[str, Any]]:
    """The hub EPP's server replaced (nothing bound): its ``grace_from`` and the stop's grace, in order."""
    out: list[tuple[str, Any]] = []

    class Server:
        def __init__(self, ctx: Any, opts: Any, **_kw: Any) -> None:
            self.port = self.health_port = self.metrics_port = 0
            out.append(("grace_from", opts.grace_from))

        def check_ports(self) -> None:
            pass

        async def start(self) -> None:
            # Never signal a process with no handler for it: SIGTERM's default would end pytest.
            handlers = getattr(asyncio.get_running_loop(), "_signal_handlers", {})
            if signal.SIGTERM not in handlers or signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                raise AssertionError("_serve started its server before its SIGTERM handler was in")
            os.kill(os.getpid(), signal.SIGTERM)

        async def begin_drain(self) -> None:
            pass

        async def stop(self, grace: float | None = None) -> None:
            out.append(("stop", grace))

        def cut_drain(self) -> None:
            pass

        async def refresh_health(self) -> None:
            pass

    monkeypatch.setattr(server_module, "EppServer", Server)
    return out


@pytest.mark.parametrize(
    ("flag", "named", "at_stop"),
    [([], "limits.drainTimeoutSeconds", 5.0), (["--drain-timeout", "3"], "--drain-timeout", None)],
)
def test_the_hub_epps_stop_drains_as_its_source_says(
    tmp_path: Path, seen: list[tuple[str, Any]], flag: list[str], named: str, at_stop: float | None
) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text(f"limits: {{drainTimeoutSeconds: 5}}\nclusters:\n- {DEAD}\n")
    assert epp_cli.main(["--clusters", str(path), "--plaintext", *flag]) == 0
    assert seen == [("grace_from", named), ("stop", at_stop)]
