"""A discrete-event virtual clock and replicas that step an ``Engine`` on it (no sockets, no sleeping).

``VirtualClock`` is a heap of ``(time, seq, handle)``: callbacks run in time order, ties in the order they
were scheduled, so a run is a pure function of its inputs. ``VirtualReplica`` wraps one ``Engine``: when it
has work and no step in flight it calls ``step(now)`` and schedules the step's end at ``now + duration``,
where it delivers the step's tokens through callbacks. The fleet simulator drives many of these on one
clock through the real picker.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

from kvgate.sim.engine import Engine
from kvgate.sim.types import SimRequest, StepResult


class TimerHandle:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self.events_run = 0

    def time(self) -> float:
        """The clock as a callable, for code that takes ``clock=`` (e.g. the scheduling Director)."""
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        if when < self.now:
            when = self.now  # never run anything in the past
        h = TimerHandle(when, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), h))
        return h

    def _push(self, when: float, handle: TimerHandle) -> None:
        """Schedule an existing (not pending) handle at ``when``: a replica reuses one for its step ends."""
        handle.when = when
        heapq.heappush(self._heap, (when, next(self._seq), handle))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return self.call_at(self.now, callback, *args)

    @property
    def pending(self) -> int:
        return len(self._heap)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def run_until(self, t: float) -> None:
        """Run every event due at or before ``t``, then leave the clock at ``t``."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= t:
            when, _, h = pop(heap)
            if h.cancelled:
                continue
            self.now = when
            self.events_run += 1
            h.callback(*h.args)
        if t > self.now:
            self.now = t

    def run(self, max_events: int | None = None) -> None:
        """Run until no events are left (or ``max_events`` have run)."""
        heap = self._heap
        pop = heapq.heappop
        budget = max_events if max_events is not None else -1
        while heap and budget != 0:
            when, _, h = pop(heap)
            if h.cancelled:
                continue
            self.now = when
            self.events_run += 1
            h.callback(*h.args)
            budget -= 1


TokenCallback = Callable[[SimRequest, int, float], None]
RequestCallback = Callable[[SimRequest, float], None]
StepCallback = Callable[["VirtualReplica", StepResult], None]


class VirtualReplica:
    """One model server on the virtual clock. Callbacks fire at the end of the step that produced them:
    ``on_token(req, token_id, t)`` per token, ``on_first_token(req, t)`` for a request's first token,
    ``on_finished(req, t)`` when it finishes, ``on_step(replica, result)`` once per step.

    ``on_step`` alone is the cheap way to observe tokens: one call per step, with ``result.tokens`` (the
    step's ``(request, token)`` pairs) and ``result.finished``, at ``replica.clock.now`` (the step's end);
    ``on_token`` costs a Python call per generated token on top (filter out ``finish_reason == "abort"``
    when using ``result`` directly, as ``on_token`` does)."""

    def __init__(
        self,
        clock: VirtualClock,
        engine: Engine,
        name: str = "",
        on_token: TokenCallback | None = None,
        on_first_token: RequestCallback | None = None,
        on_finished: RequestCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        self.clock = clock
        self.engine = engine
        self.name = name
        self.on_token = on_token
        self.on_first_token = on_first_token
        self.on_finished = on_finished
        self.on_step = on_step
        self.busy = False
        self.steps = 0
        self.busy_time = 0.0
        # At most one step is in flight: its end event reuses one handle, its result waits in ``_result``.
        self._result: StepResult | None = None
        self._step_end = TimerHandle(0.0, self._end_step, ())

    def submit(self, req: SimRequest) -> None:
        """Add ``req`` at the current virtual time; start a step if the replica is idle."""
        self.engine.add_request(req, self.clock.now)
        if not self.busy:
            self._start_step()

    def abort(self, request_id: str) -> bool:
        return self.engine.abort(request_id)

    def _start_step(self) -> None:
        engine = self.engine
        if not engine.has_work():
            return
        clock = self.clock
        now = clock.now
        res = engine.step(now)
        self.busy = True
        self.steps += 1
        self.busy_time += res.duration
        self._result = res
        clock._push(now + res.duration, self._step_end)

    def _end_step(self) -> None:
        res = self._result
        assert res is not None
        self._result = None
        self.busy = False
        t = self.clock.now
        on_token, on_first = self.on_token, self.on_first_token
        if on_token is not None or on_first is not None:
            for req, tok in res.tokens:
                if req.finish_reason == "abort":
                    continue  # aborted while the step ran: nobody is listening
                # Steps on one replica never overlap, so the output holds exactly this step's tokens so far.
                if on_first is not None and len(req.output_token_ids) == 1:
                    on_first(req, t)
                if on_token is not None:
                    on_token(req, tok, t)
        if self.on_finished is not None:
            for req in res.finished:
                self.on_finished(req, t)
        if self.on_step is not None:
            self.on_step(self, res)
        self._start_step()
