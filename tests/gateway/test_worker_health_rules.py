"""The rules behind the ``--workers`` supervisor's ``/healthz``, ``/readyz`` and restart backoff
(``kvgate.gateway.worker_health``), pure: the process tests are ``test_workers_health.py``."""

from __future__ import annotations

import asyncio
import contextlib
import time

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


class _FakeProc:
    """A worker process as the watch sees it."""

    def __init__(self, pid: int) -> None:
        self.pid, self.alive, self.exitcode = pid, True, None

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        self.exitcode = -9


async def test_wedged_workers_killed_soon_after_their_start_back_off_and_are_no_fast_deaths() -> None:
    """A worker killed for its heartbeat 3 s after its start, four times in a row: restarted after 0, 1, 2
    and 4 s; the supervisor does not give up as for workers dying at start (three within 5 s), since the
    backoff is what answers a wedge loop. Time injected (the pauses are recorded, not slept)."""
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway.workers import Supervisor

    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    cfg = parse_gateway_config({"pools": [pool], "listen": {"workers": 2, "workerTimeoutSeconds": 2}})
    sup = Supervisor(cfg, 2)
    sup.procs = [_FakeProc(100), _FakeProc(101)]  # type: ignore[list-item]
    pauses: list[float] = []
    started: list[int] = []

    async def sleep(s: float) -> None:
        pauses.append(s)

    async def start_worker(i: int) -> None:
        started.append(i)
        sup.procs[i] = _FakeProc(200 + len(started))  # type: ignore[call-overload]
        sup.admin_ports[i] = 1
        sup.heartbeat[i] = sup.reported_at[i] = time.monotonic()

    sup.sleep = sleep  # type: ignore[method-assign]
    sup.start_worker = start_worker  # type: ignore[method-assign]
    watch = asyncio.create_task(sup.watch())
    try:
        for k in range(4):
            sup.started_at[0] = time.monotonic() - 3.0  # (a fast death, were it counted as one)
            sup.admin_ports[0], sup.killed_age[0] = None, 2.1  # (as check_heartbeat leaves it)
            sup.procs[0].alive = False  # type: ignore[union-attr]
            for _ in range(600):  # 30 s: the watch polls every 0.2 s
                if len(started) == k + 1 or watch.done():
                    break
                await asyncio.sleep(0.05)
            assert len(started) == k + 1, (started, sup.failed, watch.done())
        assert not sup.failed and not watch.done() and pauses == [1, 2, 4], (pauses, sup.failed)
        assert sup.restarts == {"exited": 0, "wedged": 4}
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
