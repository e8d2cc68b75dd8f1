"""The rules behind the ``--workers`` supervisor's ``/healthz``, ``/readyz`` and restart backoff
(``kvgate.gateway.worker_health``), pure: the process tests are ``test_workers_health.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kvgate.gateway import worker_health


@pytest.mark.parametrize(
    "streak, served, delay",
    [(0, 0.0, 0.0), (1, 5.0, 1.0), (2, 0.0, 2.0), (3, 59.9, 4.0), (7, 0.0, 60.0), (40, 0.0, 60.0),
     (9, 60.0, 0.0)],
)  # fmt: skip
def test_restart_backoff_schedule(streak: int, served: float, delay: float) -> None:
    """The first restart of a slot at once, then 1 s doubling to 60 s while its workers end before
    serving 60 s; one that served 60 s starts the count again."""
    assert worker_health.restart_delay(worker_health.next_streak(streak, served)) == delay


def test_readyz_tells_busy_from_wedged_by_the_heartbeat() -> None:
    """No answer within the bound: busy (heartbeat within the wedge bound) counts as its last answer,
    wedged as not ready; the text names both."""
    slots = [
        worker_health.Slot(0, 10, True, True, beat_age=0.1),
        worker_health.Slot(1, 11, True, True, beat_age=4.0),
        worker_health.Slot(2, 12, True, True, beat_age=11.0),
        worker_health.Slot(
            3, None, False, False, beat_age=30.0, restart_in=2.0, why="exit code 1 after 3.0s"
        ),
    ]
    assert worker_health.asked(slots, 10.0) == [True, True, False, False]
    status, text = worker_health.readyz(slots, [200, None, None, None], [True, True, True, True], 10.0, 2)
    assert status == 200 and text.splitlines()[0] == "ready (2/4 workers)", text
    assert "worker 1 (pid 11) busy: no answer in time" in text
    assert "worker 2 (pid 12) wedged: no heartbeat for 11.0s (bound 10s)" in text
    assert "worker 3 restarting in 2.0s (after: exit code 1 after 3.0s)" in text
    status, text = worker_health.readyz(slots, [200, None, None, None], [True, True, True, True], 10.0, 3)
    assert status == 503 and text.splitlines()[0] == "2/4 workers ready, 3 needed", text


def test_readyz_a_refused_connection_is_not_ready_however_fresh_the_heartbeat() -> None:
    """A worker whose admin port refused the connection (``REFUSED``: its process ended or is ending) is not
    ready, though its heartbeat is fresh and its last answer was ready; one that did not answer in time
    (``None``) still counts as its last answer (lead's finding W0, session 21: a SIGKILLed worker counted
    as ready)."""
    slots = [worker_health.Slot(0, 10, True, True, beat_age=0.2), worker_health.Slot(1, 11, True, True, 0.3)]
    refused, late = worker_health.REFUSED, None
    status, text = worker_health.readyz(slots, [refused, late], [True, True], 10.0, 2)
    assert status == 503 and text.splitlines()[0] == "1/2 workers ready, 2 needed", text
    assert "worker 0 (pid 10) not ready: its admin port refused the connection" in text, text
    assert "worker 1 (pid 11) busy: no answer in time" in text, text


def test_worker_timeout_zero_never_fails_liveness_for_loops_that_block_long() -> None:
    """``workerTimeoutSeconds: 0`` is documented as "never" (no wedge kill): the operator keeps workers whose
    loops may block long (a hot reload builds its pickers on the loop, in every worker at once: the
    supervisor SIGHUPs them all). With both workers' loops blocked 11 s, ``/healthz`` stays 200 and names
    them wedged (``/readyz`` takes them out of rotation); before: 503 ``no live worker``, so a liveness
    probe restarted the whole pod, a harsher kill than the one the operator turned off (review s21-wrk
    M1). A slot with no process (down, or waiting out a backoff) is still not live."""
    bound = worker_health.wedge_bound(0)
    slots = [
        worker_health.Slot(0, 10, True, True, beat_age=11.0),
        worker_health.Slot(1, 11, True, True, 11.0),
    ]
    status, text = worker_health.healthz(slots, bound)
    assert status == 200 and text.splitlines()[0] == "ok (2/2 workers)", text
    assert "worker 0 (pid 10) wedged: no heartbeat for 11.0s (bound 10s)" in text, text
    assert worker_health.readyz(slots, [None, None], [True, True], bound, 1)[0] == 503
    gone = [worker_health.Slot(0, 10, False, True, 11.0), worker_health.Slot(1, None, False, False, 0.0, 2.0)]
    assert worker_health.healthz(gone, bound)[0] == 503


class _FakeProc:
    """A worker process as the watch sees it."""

    def __init__(self, pid: int) -> None:
        self.pid, self.alive, self.exitcode = pid, True, None

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        self.exitcode = -9


def _supervisor(**listen: object) -> Any:
    """A 2-worker ``Supervisor`` of one pool (its ``listen``: ``workers: 2`` and ``listen``)."""
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway.workers import Supervisor

    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    return Supervisor(parse_gateway_config({"pools": [pool], "listen": {"workers": 2, **listen}}), 2)


def _fake_starts(sup: Any, sleep: Callable[[float], Awaitable[None]]) -> list[int]:
    """``sup``'s pauses made ``sleep`` and its ``start_worker`` one that puts a live fake process with a
    fresh heartbeat in the slot: the slots started, in order."""
    started: list[int] = []

    async def start_worker(i: int) -> None:
        started.append(i)
        sup.procs[i] = _FakeProc(200 + len(started))
        sup.admin_ports[i] = 1
        sup.heartbeat[i] = sup.reported_at[i] = time.monotonic()

    sup.sleep = sleep
    sup.start_worker = start_worker
    return started


@contextlib.asynccontextmanager
async def _watching(sup: Any) -> AsyncIterator[asyncio.Task[None]]:
    """``sup.watch()`` running as a task, cancelled at the end."""
    watch = asyncio.create_task(sup.watch())
    try:
        yield watch
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def test_wedged_workers_killed_soon_after_their_start_back_off_and_are_no_fast_deaths() -> None:
    """A worker killed for its heartbeat 3 s after its start, four times in a row: restarted after 0, 1, 2
    and 4 s; the supervisor does not give up as for workers dying at start (three within 5 s), since the
    backoff is what answers a wedge loop. Time injected (the pauses are recorded, not slept)."""
    sup = _supervisor(workerTimeoutSeconds=2)
    sup.procs = [_FakeProc(100), _FakeProc(101)]
    pauses: list[float] = []

    async def sleep(s: float) -> None:
        pauses.append(s)

    started = _fake_starts(sup, sleep)
    async with _watching(sup) as watch:
        for k in range(4):
            sup.started_at[0] = time.monotonic() - 3.0  # (a fast death, were it counted as one)
            sup.admin_ports[0], sup.killed_age[0] = None, 2.1  # (as check_heartbeat leaves it)
            sup.procs[0].alive = False
            for _ in range(600):  # 30 s: the watch polls every 0.2 s
                if len(started) == k + 1 or watch.done():
                    break
                await asyncio.sleep(0.05)
            assert len(started) == k + 1, (started, sup.failed, watch.done())
        assert not sup.failed and not watch.done() and pauses == [1, 2, 4], (pauses, sup.failed)
        assert sup.restarts == {"exited": 0, "wedged": 4, "start_timeout": 0}


async def test_restarts_total_counts_only_restarts_that_happened() -> None:
    """``kvgate_gateway_worker_restarts_total`` ("Worker restarts by the supervisor") counts a restart once
    the new worker is started, not when the old one ended: during a backoff wait (up to 60 s), and for
    good if the gateway stops or gives up during it, it said a restart happened that did not (review
    s21-wrk L2; before: 2 counted, 1 started)."""
    sup = _supervisor(workerTimeoutSeconds=0)
    sup.procs = [_FakeProc(100), _FakeProc(101)]
    sup.admin_ports = [1, None]
    never = asyncio.Event()
    waiting = asyncio.Event()

    async def sleep(s: float) -> None:
        waiting.set()
        await never.wait()

    started = _fake_starts(sup, sleep)
    async with _watching(sup) as watch:
        for k in range(2):  # ends 10 s after its start (no fast death), before serving 60 s: streak 1, 2
            sup.started_at[0] = time.monotonic() - 10.0
            sup.procs[0].alive = False
            for _ in range(600):  # 30 s: the watch polls every 0.2 s
                if len(started) == k + 1 or waiting.is_set() or watch.done():
                    break
                await asyncio.sleep(0.05)
        assert waiting.is_set() and len(started) == 1  # the second restart waits out its 1 s backoff
        assert sum(sup.restarts.values()) == len(started), (sup.restarts, started)


async def test_a_restart_due_as_the_gateway_stops_spawns_nothing() -> None:
    """A restart task that runs after the stop began (a death seen one loop turn before SIGTERM) starts no
    worker: ``stop_workers`` already listed the ones it drains, so a new one would go unsignalled and
    unjoined (review s21-wrk L3; before: started with no wait)."""
    sup = _supervisor()
    started: list[int] = []

    async def start_worker(i: int) -> None:
        started.append(i)

    sup.start_worker = start_worker
    sup.stopping = True
    assert await sup._restart(0, 0.0) is False
    assert started == [] and sum(sup.restarts.values()) == 0, (started, sup.restarts)


async def test_a_worker_killed_for_its_start_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real worker process that does not report its start in time (the bound shrunk to 10 ms here; 60 s
    in use) is killed; its end reads ``killed: did not start within ...`` and its slot's restart counts
    as ``start_timeout``, not ``exit code -9`` / ``exited`` (review s21-wrk L2)."""
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway import workers

    monkeypatch.setattr(workers, "_START_TIMEOUT_S", 0.01)
    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    cfg = parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1", "port": 0}})
    sup = workers.Supervisor(cfg, 1)
    sup.reserve_port()
    try:
        await sup.start_worker(0)
        proc = sup.procs[0]
        assert proc is not None and sup.admin_ports[0] is None
        await asyncio.to_thread(proc.join, 30)
        assert proc.exitcode == -9, proc.exitcode
        assert sup._ended(0, proc, 0.01) == 0.0
        assert sup.why[0] == "killed: did not start within 0.01s", sup.why[0]

        async def start_worker(i: int) -> None:  # (the restart itself: not what is tested)
            pass

        sup.start_worker = start_worker  # type: ignore[method-assign]
        assert await sup._restart(0)
        assert sup.restarts == {"exited": 0, "wedged": 0, "start_timeout": 1}, sup.restarts
    finally:
        for end in sup._lifelines:
            if end is not None:
                end.close()
        if sup._reserve is not None:
            sup._reserve.close()
