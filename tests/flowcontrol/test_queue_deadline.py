"""Review s18-gw L2: a request's own deadline (the gateway's ``requestTimeoutSeconds``, ``admit``'s
``wait_max``) ends its wait in the flow-control queue through the queue's own expiry (no timer per
request: most requests are never queued), with ``QueueTimeoutError`` (504 ``request_timeout``); the
queue's TTL, when it comes first, still gives its 503."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import EVICTED_REQUEST_TIMEOUT, FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher
from kvgate.scheduling.types import InferenceRequest, NoCapacityError, PickResult, QueueTimeoutError

EP = Endpoint("10.0.0.1:8000")


def dispatcher(saturated: bool, ttl: float = 30.0) -> FlowDispatcher:
    return FlowDispatcher(
        FlowController(FlowControlConfig(ttl=ttl)),
        pick=lambda _r, _e: PickResult([EP], "default"),
        saturated=lambda _r: saturated,
        clock=time.monotonic,
        recheck_interval=0.01,
    )


def req(rid: str) -> InferenceRequest:
    return InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4)


async def test_a_queued_request_leaves_at_its_own_deadline_with_a_504() -> None:
    d = dispatcher(saturated=True)
    t = time.monotonic()
    with pytest.raises(QueueTimeoutError) as e:
        await asyncio.wait_for(d.admit(req("a"), wait_max=0.2), 10)
    assert 0.2 <= time.monotonic() - t < 5  # (its TTL: 30 s)
    assert e.value.status == 504 and e.value.code == "request_timeout"
    assert "requestTimeoutSeconds" in e.value.message
    assert len(d) == 0


async def test_the_ttl_when_it_comes_first_is_still_a_503() -> None:
    d = dispatcher(saturated=True, ttl=0.2)
    with pytest.raises(NoCapacityError):
        await asyncio.wait_for(d.admit(req("a"), wait_max=60), 10)


def test_the_earlier_of_the_two_is_the_items_expiry() -> None:
    ctl = FlowController(FlowControlConfig(ttl=30.0))
    a = ctl.enqueue(req("a"), 100.0, bound=105.0)
    b = ctl.enqueue(req("b"), 100.0, bound=200.0)
    c = ctl.enqueue(req("c"), 100.0)
    assert (a.deadline, a.bounded) == (105.0, True)
    assert (b.deadline, b.bounded) == (130.0, False)
    assert (c.deadline, c.bounded) == (130.0, False)
    assert ctl.expire(104.9) == []
    assert ctl.expire(105.0) == [a] and a.outcome == EVICTED_REQUEST_TIMEOUT  # (not the TTL's)
    assert ctl.expire(130.0) == [b, c]


async def test_a_request_not_queued_arms_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Picked at once (the usual case): the deadline costs nothing, no event-loop timer."""
    d = dispatcher(saturated=False)
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def spy(when: float, *args: object, **kw: object) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_at", spy)
    assert (await d.admit(req("a"), wait_max=0.5)).endpoints == [EP]
    assert armed == []
