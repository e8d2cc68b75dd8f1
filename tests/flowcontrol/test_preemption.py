"""Preemption (``flowControl.preemption``) on the Director: a request that is not sheddable and finds
the pool saturated stops the newest sheddable request that has no first token yet and takes its
place. The doors' side (abort upstream, 429 to the client) is in ``test_preemption_doors.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest

WAIT = 10.0


def director(
    preemption: bool = True, max_concurrency: int = 1, endpoints: int = 1, metrics: bool = False
) -> Director:
    cfg: dict[str, Any] = {
        "featureGates": ["flowControl"],
        "flowControl": {"preemption": preemption},
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": max_concurrency},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    addrs = [f"10.0.0.{i}:8000" for i in range(1, endpoints + 1)]
    return build_director(cfg, EndpointStore.from_addresses(addrs), flow_metrics=metrics)


def req(rid: str, priority: int = 0, stream: bool = False) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, priority=priority, stream=stream)


class Victim:
    """A sheddable request in flight, as a door registers it (streamed unless said otherwise)."""

    def __init__(
        self, d: Director, rid: str, can_stop: bool = True, on: str | None = None, stream: bool = True
    ) -> None:
        self.req = req(rid, priority=-1, stream=stream)
        if on is not None:
            self.req.subset = frozenset({on})
        self.ep = d.pick(self.req).primary
        d.on_dispatched(self.req, self.ep)
        self.stopped = 0
        self.can_stop = can_stop
        d.preemptible(self.req, self.ep, self.stop)

    def stop(self) -> bool:
        self.stopped += 1
        return self.can_stop


async def waits(task: asyncio.Task[Any]) -> bool:
    """True when ``task`` is still waiting after the dispatcher has had several passes."""
    await asyncio.sleep(0.1)
    return not task.done()


async def test_a_critical_request_stops_the_newest_sheddable_one_and_takes_its_place() -> None:
    from prometheus_client import REGISTRY

    def preemptions() -> float:  # (its own label once it has earned one, else "other"; both only grow)
        return sum(
            REGISTRY.get_sample_value(
                "kvgate_flow_control_preemptions_total", {"priority": "-1", "fairness_id": f}
            )
            or 0.0
            for f in ("default-flow", "other")
        )

    before = preemptions()
    d = director(max_concurrency=2, metrics=True)
    old, new = Victim(d, "old"), Victim(d, "new")
    ep = old.ep
    assert d.saturated(req("probe"))
    result = await asyncio.wait_for(d.admit(req("critical", priority=10)), WAIT)
    assert (new.stopped, old.stopped) == (1, 0)  # the newest has done the least work
    assert preemptions() == before + 1
    assert result.primary is ep
    assert ep.inflight.requests == 2  # the old sheddable one + the critical one; the stopped one released
    d.on_finished(new.req, new.ep, None, False)  # the door's own close of the stopped request: a no-op
    assert ep.inflight.requests == 2


def test_only_streamed_sheddable_requests_are_offered() -> None:
    """The one rule for both doors: a non-streamed reply shows no first token before its end, so it
    could be stopped deep into its generation; a request that is not sheddable is never a victim."""
    d = director()
    assert d.offers_preemption(req("s", priority=-1, stream=True))
    assert not d.offers_preemption(req("whole", priority=-1))
    assert not d.offers_preemption(req("critical", priority=10, stream=True))
    assert not director(preemption=False).offers_preemption(req("s", priority=-1, stream=True))


async def test_a_non_streamed_sheddable_request_is_not_stopped() -> None:
    d = director()
    v = Victim(d, "whole", stream=False)  # offered by the door all the same: the Director declines it
    task = asyncio.ensure_future(d.admit(req("critical", priority=10)))
    try:
        assert await waits(task)
        assert v.stopped == 0
    finally:
        task.cancel()


async def test_a_request_with_its_first_token_is_not_stopped() -> None:
    d = director()
    v = Victim(d, "v")
    d.on_first_token(v.req, v.ep)
    task = asyncio.ensure_future(d.admit(req("critical", priority=10)))
    try:
        assert await waits(task)
        assert v.stopped == 0
        d.on_finished(v.req, v.ep, None, True)  # capacity frees the ordinary way
        await asyncio.wait_for(task, WAIT)
    finally:
        task.cancel()


async def test_a_victim_that_can_no_longer_be_stopped_is_skipped() -> None:
    d = director(max_concurrency=2)
    old = Victim(d, "old")
    new = Victim(d, "new", can_stop=False)  # e.g. the ext_proc door already answered its headers
    await asyncio.wait_for(d.admit(req("critical", priority=10)), WAIT)
    assert (new.stopped, old.stopped) == (1, 1)


@pytest.mark.parametrize("preemption", [False, True])
async def test_off_by_default_and_never_for_a_sheddable_head(preemption: bool) -> None:
    d = director(preemption=preemption)
    v = Victim(d, "v")
    # Off: nothing is stopped. On: a sheddable head waits like any other (no preemption among equals).
    task = asyncio.ensure_future(d.admit(req("x", priority=0 if not preemption else -1)))
    try:
        assert await waits(task)
        assert v.stopped == 0
    finally:
        task.cancel()


async def test_a_victim_on_an_endpoint_outside_the_subset_is_not_stopped() -> None:
    d = director(endpoints=2)
    a, b = Victim(d, "a", on="10.0.0.1:8000"), Victim(d, "b", on="10.0.0.2:8000")
    critical = req("critical", priority=10)
    critical.subset = frozenset({a.ep.address})
    result = await asyncio.wait_for(d.admit(critical), WAIT)
    assert result.primary is a.ep
    assert (a.stopped, b.stopped) == (1, 0)


def test_a_try_looks_at_the_newest_stoppable_requests_only() -> None:
    """Bounded work per try (it runs for every blocked critical head on every dispatch pass): past the
    newest ``PREEMPT_SCAN`` stoppable requests, none is looked at, so a victim only on an endpoint the
    critical request can use, buried under that many on endpoints it cannot, is not found."""
    from kvgate.requestcontrol.director import PREEMPT_SCAN

    d = director(max_concurrency=10**6, endpoints=2)
    buried = Victim(d, "buried", on="10.0.0.1:8000")
    others = [Victim(d, f"o{i}", on="10.0.0.2:8000") for i in range(PREEMPT_SCAN)]
    critical = req("critical", priority=10)
    critical.subset = frozenset({"10.0.0.1:8000"})
    assert not d._preempt(critical)
    assert buried.stopped == 0 and all(o.stopped == 0 for o in others)
    # One fewer above it: now within reach.
    d2 = director(max_concurrency=10**6, endpoints=2)
    buried2 = Victim(d2, "buried", on="10.0.0.1:8000")
    for i in range(PREEMPT_SCAN - 1):
        Victim(d2, f"o{i}", on="10.0.0.2:8000")
    assert d2._preempt(critical)
    assert buried2.stopped == 1
