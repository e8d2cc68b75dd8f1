"""Review s8-final-b F1 (the reviewer's test): one transient exception from the flow-control gate
(54fc3f9) answered EVERY queued request 503 at once, though the gate works again on the next 20 ms
recheck. Before 54fc3f9 the next arrival restarted the task and they were served; retrying the gate at
the recheck interval (TTL expiry still runs first in ``step``, so a persistent fault ends at the TTL,
also behind a reload) keeps R1 fixed without turning one bad metric read into a dropped queue.
N2: a pick's exception counted in kvgate_scheduler_errors_total."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.scheduling.types import InferenceRequest


def _doc() -> dict[str, Any]:
    picker = {
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
        "featureGates": ["flowControl"],
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
    }
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
        ],
    }


def test_one_transient_gate_exception_does_not_503_the_whole_queue() -> None:
    async def main() -> None:
        cfg = parse_gateway_config(_doc())
        pool = build_pool(cfg.pools[0])
        (ep,) = pool.store.all()
        d = pool.director
        assert d.flow is not None and d.detector is not None
        ep.inflight.requests = 1  # full: the three requests queue
        tasks = [asyncio.create_task(d.admit(InferenceRequest(f"r{i}", "m"))) for i in range(3)]
        for _ in range(1000):
            if d.queued() == 3:
                break
            await asyncio.sleep(0)
        assert d.queued() == 3
        real = d.detector.saturated
        calls = [0]

        def flaky(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                raise ValueError("one unparsable metric sample")  # once; fine from then on
            return real(*a, **k)

        d.detector.saturated = flaky
        ep.inflight.requests = 0
        # (maxConcurrency 1: the first leaves at once, the others one by one as each finishes; the
        # first's fate is what matters: it must not be answered 503 for one bad read)
        d.flow.notify()
        for _ in range(20):  # a few recheck intervals
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.03)
        try:
            failed = [t for t in tasks if t.done() and t.exception() is not None]
            assert not failed, (
                f"{len(failed)} of 3 queued requests answered after ONE gate exception with the pool "
                f"free: {failed[0].exception()!r} (queue now {d.queued()})"
            )
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_a_pick_that_raises_is_counted_as_a_scheduler_error() -> None:
    """N2: a plugin's exception in a pick (answered 500) shows in kvgate_scheduler_errors_total."""
    from kvgate.scheduling import metrics

    cfg = parse_gateway_config(_doc())
    pool = build_pool(cfg.pools[0])
    d = pool.director

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("a scorer bug")

    d._pick = broken  # type: ignore[method-assign]
    before = metrics.SCHEDULER_ERRORS.labels(code="internal_error")._value.get()
    with contextlib.suppress(RuntimeError):
        d.pick(InferenceRequest("r", "m"))
    assert metrics.SCHEDULER_ERRORS.labels(code="internal_error")._value.get() == before + 1
