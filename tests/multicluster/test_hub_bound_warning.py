"""Closing note s22 / review s22-hubqa F2: with ``limits.requestTimeoutSeconds`` at or under the
``connect_timeout`` of Envoy's cluster (5 s by default), a cut comes while Envoy still waits on a primary
that drops its SYNs, and the hub's cut walk charges (backs off) the fallback, which Envoy never tried, at
every such cut (the hub's side: ``test_hub_cut_fallback.py[blackholed-False]``, a 0.6 s bound, a live
fallback charged and probed). The hub cannot see Envoy's setting, but it knows the default: ``kvgate epp
--clusters`` now warns at start, and at a reload that sets such a bound, where a destination can hold
fallbacks. The real subprocess; its stderr read line by line up to a deadline.

hub33: the hub names fallbacks only with ``destination_fallbacks: true`` (or ``--destination-fallbacks
true``); with one address named (the default since) there is no fallback to charge wrongly, and no
warning."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from extproc.test_cli import _launch, _stop

WARNING = "is at or under Envoy's default connect_timeout (5s)"


def _file(path: Path, bound: float, gateways: int = 2, fallbacks: bool = True) -> None:
    body = "".join(f"- name: c{i}\n  gateway: 127.0.0.1:{9 + i}\n" for i in range(gateways))
    named = "destination_fallbacks: true\n" if fallbacks else ""
    path.write_text(f"{named}limits: {{requestTimeoutSeconds: {bound}}}\nclusters:\n{body}")


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    assert await _stop(proc) == 0
    assert proc.stderr is not None
    return (await proc.stderr.read()).decode()


OFF, ON = ["--destination-fallbacks", "false"], ["--destination-fallbacks", "true"]


# (one case a test: each a kvgate epp start and stop, 3-6 s at load ~10; eight in one test took 45 s of
# pytest-timeout's 120 s: rev-ci33)
@pytest.mark.parametrize(
    ("bound", "gateways", "fallbacks", "flags", "warned"),
    [
        (2, 2, True, [], True),
        (5, 3, True, [], True),
        (30, 2, True, [], False),
        (2, 1, True, [], False),
        (0, 2, True, [], False),
        (2, 2, False, [], False),
        (2, 2, True, OFF, False),
        (2, 2, False, ON, True),
    ],
)
async def test_a_bound_under_envoys_default_connect_timeout_is_warned_at_start(
    tmp_path: Path, bound: float, gateways: int, fallbacks: bool, flags: list[str], warned: bool
) -> None:
    f = tmp_path / "clusters.yaml"
    _file(f, bound, gateways, fallbacks)
    proc, _ports = await _launch("--clusters", str(f), "--plaintext", *flags)
    err = await _stderr(proc)
    assert (WARNING.replace("(5s)", "") in err) is warned, (bound, gateways, fallbacks, flags, err[-1500:])
    if warned:
        assert f"limits.requestTimeoutSeconds ({bound}s)" in err, err[-1500:]


async def test_a_reload_setting_such_a_bound_warns(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    _file(f, 30)
    proc, _ports = await _launch("--clusters", str(f), "--plaintext")
    try:
        _file(f, 3)
        proc.send_signal(signal.SIGHUP)  # (the file read now)
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            while WARNING not in (await proc.stderr.readline()).decode():
                pass
    finally:
        await _stderr(proc)
