"""Optional flow control: an async admission step a front door awaits before dispatching.

While the pool is not saturated and nothing is queued, ``admit`` is just ``Director.pick``. Under
saturation, requests with priority >= 0 wait here instead of piling onto the servers: strict priority
bands (higher first), round robin between flows (fairness id) inside a band, FCFS inside a flow. The
endpoint is chosen when a request leaves the queue (late binding), so it sees the load at that moment.
Sheddable requests (priority < 0) are never queued: at saturation they are rejected at once (429), as
without flow control. A full queue rejects (429); a request that waited ``ttl`` seconds fails with 503.

The queue re-checks saturation when ``notify()`` is called (a request finished) and every
``recheck_interval`` seconds (scraped metrics change on their own). Waiting uses real asyncio time;
the virtual-clock simulator calls ``Director.pick`` directly instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest, NoCapacityError, PickResult, SchedulingError, ShedError


@dataclass(slots=True, eq=False)
class _Waiter:
    req: InferenceRequest
    fut: asyncio.Future[PickResult]
    deadline: float
    explain: bool = False
    done: bool = field(default=False)


class AdmissionQueue:
    def __init__(
        self, director: Director, *, max_queued: int = 1024, ttl: float = 30.0, recheck_interval: float = 0.02
    ) -> None:
        self.director = director
        self.max_queued = max_queued
        self.ttl = ttl
        self.recheck_interval = recheck_interval
        # priority -> flow id -> FIFO of waiters
        self._bands: dict[int, OrderedDict[str, deque[_Waiter]]] = {}
        self._count = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return self._count

    def saturated(self, req: InferenceRequest) -> bool:
        det = self.director.detector
        if det is None:
            return False
        return det.saturated(self.director.candidates(req), self.director.clock())

    async def admit(self, req: InferenceRequest, explain: bool = False) -> PickResult:
        if req.sheddable or (self._count == 0 and not self.saturated(req)):
            return self.director.pick(req, explain)
        if self._count >= self.max_queued:
            raise ShedError("flow control queue is full")
        loop = asyncio.get_running_loop()
        w = _Waiter(req, loop.create_future(), loop.time() + self.ttl, explain)
        flows = self._bands.setdefault(req.priority, OrderedDict())
        flows.setdefault(req.fairness_id, deque()).append(w)
        self._count += 1
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="kvgate-admission")
        self._wake.set()
        try:
            return await w.fut
        finally:
            if not w.done:  # cancelled (client gone): leave the queue
                w.done = True
                self._count -= 1

    def notify(self) -> None:
        """Capacity may have freed up (a request finished): re-check the queue now."""
        self._wake.set()

    def _head(self) -> _Waiter | None:
        for prio in sorted(self._bands, reverse=True):
            flows = self._bands[prio]
            while flows:
                flow, q = next(iter(flows.items()))
                while q and q[0].done:
                    q.popleft()
                if not q:
                    del flows[flow]
                    continue
                return q[0]
            del self._bands[prio]
        return None

    def _pop(self, w: _Waiter) -> None:
        flows = self._bands[w.req.priority]
        q = flows[w.req.fairness_id]
        q.popleft()
        flows.move_to_end(w.req.fairness_id)  # round robin between flows of one band
        if not q:
            del flows[w.req.fairness_id]
        w.done = True
        self._count -= 1

    def _expire(self, now: float) -> None:
        for flows in self._bands.values():
            for q in flows.values():
                for w in q:
                    if not w.done and now >= w.deadline:
                        w.done = True
                        self._count -= 1
                        if not w.fut.done():
                            w.fut.set_exception(NoCapacityError("flow control queue TTL expired"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._count > 0:
            self._wake.clear()
            self._expire(loop.time())
            while (w := self._head()) is not None:
                try:
                    if self.saturated(w.req):
                        break
                    self._pop(w)
                    result = self.director.pick(w.req, w.explain)
                except SchedulingError as e:
                    if not w.done:
                        self._pop(w)
                    if not w.fut.done():
                        w.fut.set_exception(e)
                    continue
                if not w.fut.done():
                    w.fut.set_result(result)
            if self._count > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.recheck_interval)
