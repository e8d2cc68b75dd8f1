"""The supervisor zeroes a dead worker's rows of the shared segment when it sees the death
(``workers.Supervisor._ended``), not only at the restart, which may wait out a backoff of up to a minute
(review s21-wk M1; review s21-fixes-c F3: its real-process guard is ``slow``, outside the default suite).

One real segment, laid out as ``Supervisor.run`` lays it out; worker 1's rows written through the views a
worker attaches (``_share_inflight``, ``_attach_tenants``): an endpoint's in-flight counts, a request
against ``maxConcurrentRequests``, a queued request against flow control's ``maxRequests`` and its queue
mark. Worker 1 is a real process that has ended; the supervisor is told (``_ended``), and worker 0 then
sees none of worker 1's rows: nothing in flight, the fleet's queue empty, no mark."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kvgate.config.gateway import parse_gateway_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol import fleet
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.gateway import workers
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.scheduling.types import InferenceRequest, ShedError

NOW = 100.0
ADDR = "127.0.0.1:9"


@contextmanager
def _supervisor() -> Iterator[workers.Supervisor]:
    """A two-worker supervisor with its shared segment made as ``Supervisor.run`` makes it (not started)."""
    pool = {"name": "p", "endpoints": [ADDR], "models": ["m"]}
    sup = workers.Supervisor(parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1"}}), 2)
    from kvgate.gateway.shared_tenants import SharedTenants, segment_size

    at = workers._tenants_offset(sup.n)
    sup.shared = SharedInFlight.create(sup.n, sup.ctx.Lock(), extra=at + segment_size(sup.n))
    sup.marks = fleet.FleetMarks(sup.shared.extra, sup.n, -1, table=workers.inflight_layout())
    sup.tenants = SharedTenants(sup.shared.extra[at:], sup.n, -1, sup.shared.lock)
    try:
        yield sup
    finally:
        sup.marks.close()
        sup.tenants.close()
        sup.shared.close()


class _Worker:
    """Worker ``index``'s views of the segment, attached as a worker attaches them."""

    def __init__(self, sup: workers.Supervisor, index: int, cfg: FlowControlConfig) -> None:
        shared = (sup.shared.name, sup.shared.lock, sup.n)
        self.tenants = workers._attach_tenants(shared, index)
        self.view = SharedInFlight.attach(shared[0], shared[1], sup.n, index, extra=fleet.segment_size(sup.n))
        self.marks = fleet.FleetMarks(self.view.extra, sup.n, index, lock=self.tenants)
        self.ctl = FlowController(cfg)
        mark = self.marks.pool("p")
        assert mark is not None
        self.mark = mark
        mark.limits.attach(self.ctl)
        self.endpoint = Endpoint(ADDR)

    def queue(self, rid: str) -> None:
        req = InferenceRequest(rid, "m", prompt_text="x" * 10, max_tokens=4, fairness_id="f")
        self.ctl.enqueue(req, NOW)

    def close(self) -> None:
        self.marks.close()
        self.view.close()
        self.tenants.close()


def _ended_process() -> Any:
    """A real process that has ended (exit code 3), as ``Supervisor.watch`` hands ``_ended`` one: joined."""
    proc = multiprocessing.get_context("spawn").Process(target=os._exit, args=(3,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3, proc.exitcode
    return proc


def test_a_dead_workers_rows_are_zeroed_when_the_supervisor_sees_its_death() -> None:
    cfg = FlowControlConfig(max_requests=1)
    with _supervisor() as sup:
        w0, w1 = _Worker(sup, 0, cfg), _Worker(sup, 1, cfg)
        try:
            # worker 1: a request in flight at the endpoint, one counted against maxConcurrentRequests,
            # one queued (the fleet's maxRequests: 1) and its queue mark published
            w1.endpoint.inflight.requests = w1.endpoint.inflight.calls = 1
            w1.view.sync([w1.endpoint])
            assert w1.tenants.enter(10)
            w1.queue("a")
            w1.mark.publish(w1.ctl, NOW)
            # worker 0 sees all of it
            w0.view.sync([w0.endpoint])
            assert (w0.endpoint.inflight.requests, w0.endpoint.inflight.calls) == (1, 1)
            assert w0.tenants.inflight() == 1
            with pytest.raises(ShedError):  # the fleet's queue (maxRequests 1) is full
                w0.queue("refused")
            assert w0.mark._find(1, NOW) is not None  # (worker 1's mark for the pool)

            proc = _ended_process()
            delay = sup._ended(1, proc, 0.5)  # (its first end: restarted at once)

            assert delay == 0.0 and sup.why[1] == "exit code 3 after 0.5s", (delay, sup.why[1])
            w0.view.sync([w0.endpoint])
            assert (w0.endpoint.inflight.requests, w0.endpoint.inflight.calls) == (0, 0)
            assert w0.tenants.inflight() == 0
            w0.queue("b")  # the dead worker's queued place was given back
            assert w0.mark._find(1, NOW) is None  # no mark: its row is zero
        finally:
            w0.close()
            w1.close()
