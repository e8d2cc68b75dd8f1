"""Preemption in the ext_proc door: the EPP can only tell Envoy at its next answer, so a streamed
sheddable request is stoppable until its response headers are answered, and the answer to them is
then a 429 ``ImmediateResponse`` (Envoy sends it to the client and resets the upstream request)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc.session import Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.openai.request import RequestPolicy
from kvgate.scheduling.types import InferenceRequest, PickResult

EP = Endpoint("127.0.0.1:18202")


class Registering:
    """A director that records the preemption callbacks a session registers."""

    def __init__(self) -> None:
        self.stops: list[Callable[[], bool]] = []
        self.offered: list[InferenceRequest] = []
        self.finished = 0

    def pick(self, req: InferenceRequest) -> PickResult:
        return PickResult([EP], "default")

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None: ...

    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None: ...

    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None:
        self.finished += 1

    def preemptible(self, req: InferenceRequest, endpoint: Endpoint, stop: Callable[[], bool]) -> None:
        self.offered.append(req)
        self.stops.append(stop)


def dispatched(director: Registering, *, stream: bool, objective: str = "batch") -> Session:
    policy = RequestPolicy(objectives={"batch": -1, "critical": 10})
    ctx = SessionContext(director, lambda: {EP.address: EP}, clock=time.monotonic, policy=policy)
    s = Session(ctx)
    h = {":method": "POST", ":path": "/v1/completions", "x-gateway-inference-objective": objective}
    assert s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(h)))) == []
    body = orjson.dumps({"model": "m", "prompt": "p", "stream": stream})
    out = s.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    assert out and out[0].HasField("request_headers")  # dispatched to EP
    return s


def response_headers(s: Session) -> list[pb.ProcessingResponse]:
    h = header_map({":status": "200", "content-type": "text/event-stream"})
    return s.handle(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=h)))


def test_stopped_before_the_response_headers_the_answer_to_them_is_a_429() -> None:
    d = Registering()
    s = dispatched(d, stream=True)
    (stop,) = d.stops
    assert stop()
    (out,) = response_headers(s)
    assert out.immediate_response.status.code == 429
    assert b"preempted" in out.immediate_response.body
    # Every 429 says when to come back, as the embedded gateway's (review s18-qa L1: none in ext_proc).
    sets = {h.header.key: h.header.raw_value for h in out.immediate_response.headers.set_headers}
    assert sets.get("retry-after") == b"1", sets
    assert s.done
    s.close()
    assert d.finished == 0  # the director already released it: no second close


def test_after_the_response_headers_it_can_no_longer_be_stopped() -> None:
    d = Registering()
    s = dispatched(d, stream=True)
    (out,) = response_headers(s)
    assert out.HasField("response_headers")
    assert not d.stops[0]()
    s.close()
    assert d.finished == 1


def test_the_door_offers_what_it_dispatched_and_the_director_chooses() -> None:
    """Which requests may be stopped (streamed sheddable ones) is ``Director.offers_preemption``'s rule
    (``tests/flowcontrol/test_preemption.py``): the door passes each request on, ``stream`` as parsed."""
    d = Registering()
    dispatched(d, stream=False).close()
    dispatched(d, stream=True, objective="critical").close()
    assert [(r.stream, r.sheddable) for r in d.offered] == [(False, True), (True, False)]
