"""Review s23-rev-fixqa23 R2 (the reviewer's tests, adapted): ``kvgate epp`` teaches the director a
stream's output-event count (no usage chunk: review s23-qa F1) also when the response ends with trailers
(``deploy/envoy.yaml``: ``response_trailer_mode: SEND``; the last body message without
``end_of_stream``). ``response_trailers`` flushed the scanner, dropping it, before ``_finish`` read its
count: the director was told None, so no TPOT, pace or mean decode was learned from such a stream."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc.session import Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.scheduling.types import InferenceRequest, PickResult

EP = Endpoint("127.0.0.1:18299")


class Recording:
    """A director that picks ``EP`` and records the usage each finished request teaches it."""

    def __init__(self) -> None:
        self.usages: list[Any] = []

    def pick(self, req: InferenceRequest) -> PickResult:
        return PickResult([EP], "default")

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None: ...

    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None: ...

    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None:
        self.usages.append(usage)


def _chat(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    obj = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


# The role chunk (no output), three output events, [DONE]: 3 output tokens.
STREAM = (
    _chat({"role": "assistant", "content": ""})
    + _chat({"content": "a"})
    + _chat({"content": " b"})
    + _chat({"content": " c"}, "length")
    + b"data: [DONE]\n\n"
)


def _session(d: Recording) -> Session:
    s = Session(SessionContext(d, lambda: {EP.address: EP}, clock=time.monotonic))
    h = {":method": "POST", ":path": "/v1/chat/completions"}
    assert s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(h)))) == []
    body = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    out = s.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    assert out and out[0].HasField("request_headers")
    rh = header_map({":status": "200", "content-type": "text/event-stream"})
    s.handle(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=rh)))
    return s


@pytest.mark.parametrize("trailers", [False, True], ids=["end_of_stream", "trailers"])
def test_the_output_count_reaches_the_director(trailers: bool) -> None:
    d = Recording()
    s = _session(d)
    out = s.handle(pb.ProcessingRequest(response_body=pb.HttpBody(body=STREAM, end_of_stream=not trailers)))
    if trailers:
        out += s.handle(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
        assert out[-1].HasField("response_trailers")
    assert len(d.usages) == 1, d.usages
    assert d.usages[0] is not None and d.usages[0].completion_tokens == 3, (
        f"a stream ended by {'trailers' if trailers else 'end_of_stream'} taught the director "
        f"{d.usages[0]!r}, not its 3 output events"
    )
