"""The fleet segment's layout checked both ways between a supervisor and a worker of another version
(session 25's closing note: "a worker from before the layout mark cannot detect a mismatched layout").

Mixed versions share one segment only inside one ``kvgate serve --workers N``: the segment's name is the
supervisor's own (random), so two gateways (a rolling restart of pods or of two ``serve`` processes) never
share one. It happens when the installed kvgate changes under a running supervisor and a worker is then
spawned again (a death, a wedge) from the code on disk:
- a newer worker under an older supervisor: the worker checks the segment's mark (session 25);
- an older worker under a newer supervisor (a rollback in place): a worker from before the mark checks
  nothing, so the supervisor's spawn arguments now carry its layout mark as a fourth item
  (``workers.worker_shared``): such a worker unpacks exactly three at its first use of them and stops
  there, before it attaches anything; a worker with the check compares the mark with its own.
No process is spawned; the arguments are the ones ``Supervisor.start_worker`` hands ``Process``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kvgate.config.gateway import parse_gateway_config
from kvgate.flowcontrol import fleet
from kvgate.gateway import workers
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.shared_tenants import SharedTenants
from kvgate.gateway.shared_tenants import segment_size as tenants_size

REPO = Path(__file__).resolve().parents[2]
PREMARK = "0a858056^"  # main just before the layout mark (review s25-rev-wk25 F1)


class _Spawned(Exception):
    pass


class _Recorder:
    """``Supervisor.ctx`` for one ``start_worker``: the real pipes; ``Process`` keeps its arguments and its
    ``start`` stops the spawn there (``start_worker`` closes the pipes and raises it on)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.kwargs: dict[str, Any] = {}

    def Pipe(self, duplex: bool = True) -> Any:
        return self.real.Pipe(duplex=duplex)

    def Process(self, **kwargs: Any) -> Any:
        self.kwargs = kwargs

        class _P:
            def start(self) -> None:
                raise _Spawned

        return _P()


@contextmanager
def _supervisor() -> Iterator[workers.Supervisor]:
    """A two-worker supervisor with its segment made as ``Supervisor.run`` makes it (not started)."""
    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    sup = workers.Supervisor(parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1"}}), 2)
    at = workers._tenants_offset(sup.n)
    sup.shared = SharedInFlight.create(sup.n, sup.ctx.Lock(), extra=at + tenants_size(sup.n))
    sup.marks = fleet.FleetMarks(sup.shared.extra, sup.n, -1, table=workers.inflight_layout())
    sup.tenants = SharedTenants(sup.shared.extra[at:], sup.n, -1, sup.shared.lock)
    try:
        yield sup
    finally:
        sup.marks.close()
        sup.tenants.close()
        sup.shared.close()


async def _spawn_args(sup: workers.Supervisor) -> Any:
    """The ``shared`` argument ``start_worker`` gives worker 1's process."""
    rec = _Recorder(sup.ctx)
    sup.ctx = rec  # type: ignore[assignment]
    with pytest.raises(_Spawned):
        await sup.start_worker(1)
    args = rec.kwargs["args"]
    return args[5]


# The first lines of a worker from before the mark that touch ``shared`` (``workers._attach_tenants`` at
# PREMARK, verbatim but for the offset helper, passed in): every version since the tenant table (feb991f7)
# calls it first, before its server starts; it checks no layout.
def _premark_attach_tenants(shared: Any, index: int, tenants_offset: Any) -> Any:
    if shared is None:
        return None
    from kvgate.gateway.shared_inflight import DEFAULT_SLOTS, segment_size
    from kvgate.gateway.shared_tenants import SharedTenants

    name, lock, workers = shared
    return SharedTenants.attach(name, segment_size(workers, DEFAULT_SLOTS) + tenants_offset(workers), lock,
                                workers, index)  # fmt: skip


def _premark_offset(workers_n: int) -> int:
    """The tenant table's offset a worker from before the mark computes: its fleet part had no mark word."""
    return fleet.segment_size(workers_n) - 8


def test_the_premark_reader_above_is_that_versions_own() -> None:
    """(The copy above is checked against the history where the clone has it.)"""
    try:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{PREMARK}:src/kvgate/gateway/workers.py"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"{PREMARK} is not in this clone's history")
    assert "    name, lock, workers = shared\n    return SharedTenants.attach(" in src
    assert "_check_fleet_layout" not in src and "check_layout" not in src  # (it checks nothing)


async def test_a_worker_from_before_the_mark_stops_before_it_attaches_under_this_supervisor() -> None:
    """Before: the supervisor handed ``(name, lock, workers)``, which such a worker took, and it attached the
    tenant table 8 bytes off the supervisor's (and the fleet rows at another stride), serving on."""
    with _supervisor() as sup:
        shared = await _spawn_args(sup)
        got = None
        try:
            with pytest.raises(ValueError, match="too many values to unpack"):
                got = _premark_attach_tenants(shared, 1, _premark_offset)
        finally:
            if got is not None:
                got.close()


async def test_a_worker_compares_the_supervisors_mark_with_its_own() -> None:
    """What this code's supervisor hands passes this code's worker; another layout's mark is refused
    before the segment is opened, with what to do; a supervisor's 3-tuple (before this) still passes on
    the segment's own mark."""
    with _supervisor() as sup:
        shared = await _spawn_args(sup)
        assert shared[:3] == (sup.shared.name, sup.shared.lock, 2)
        workers._check_fleet_layout(shared)  # (this code's: passes)
        workers._check_fleet_layout(shared[:3])  # (a supervisor from before: the segment's mark decides)
        other = (*shared[:3], fleet.layout_mark() ^ 0x5A5A)
        with pytest.raises(ValueError, match=r"supervisor's flow-control fleet layout.*restart the"):
            workers._check_fleet_layout(other)
        tenants = workers._attach_tenants(shared, 1)  # (this code's worker reads the 4 items)
        try:
            assert tenants is not None
        finally:
            tenants.close()
