"""The state machine without sockets: error mapping, and the SSE scanner under arbitrary chunking."""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc.session import Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.openai.sse import SSEScanner
from kvgate.scheduling.types import (
    BadRequestError,
    InferenceRequest,
    ModelNotFoundError,
    NoCapacityError,
    PickResult,
    ShedError,
)

EP = Endpoint("127.0.0.1:18201")


class Raising:
    """A picker that fails the way the Director does; it must never be charged for a request."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.dispatched = 0

    def pick(self, req: InferenceRequest) -> PickResult:
        raise self.exc

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None:
        self.dispatched += 1

    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None: ...

    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None: ...


def _run(picker: Any) -> pb.ProcessingResponse:
    ctx = SessionContext(picker, lambda: {EP.address: EP}, clock=time.monotonic)
    s = Session(ctx)
    headers = pb.HttpHeaders(headers=header_map({":method": "POST", ":path": "/v1/completions"}))
    assert s.handle(pb.ProcessingRequest(request_headers=headers)) == []
    body = pb.HttpBody(body=orjson.dumps({"model": "m", "prompt": "p"}), end_of_stream=True)
    (out,) = s.handle(pb.ProcessingRequest(request_body=body))
    s.close()
    assert s.done
    return out


@pytest.mark.parametrize(
    ("error", "text", "status"),
    [
        (BadRequestError, "bad", 400),
        (ModelNotFoundError, "no such model", 404),
        (ShedError, "saturated", 429),
        (NoCapacityError, "nothing ready", 503),
        (RuntimeError, "bug", 500),
    ],
)
def test_picker_errors_become_immediate_responses(error: type[Exception], text: str, status: int) -> None:
    # (the error made here, not in the parameters: pytest keeps those all session, and a raised error's
    # traceback keeps its frames, the request among them; session 27's final CI counted one alive)
    exc = error(text)
    picker = Raising(exc)
    out = _run(picker)
    assert out.WhichOneof("response") == "immediate_response"
    assert out.immediate_response.status.code == status
    err = orjson.loads(out.immediate_response.body)["error"]
    # One error shape for both front doors (config.protocol.error_body): OpenAI's string code.
    assert err["code"] == getattr(exc, "code", "internal_error")
    assert err["type"] and err["param"] is None
    # An internal error never leaks its text; typed errors explain themselves.
    assert ("bug" not in err["message"]) if status == 500 else (str(exc) == err["message"])
    assert picker.dispatched == 0


STREAM_EVENTS = [
    {"model": "m-rewritten", "choices": [{"delta": {"content": "a"}}]},
    {"model": "m-rewritten", "choices": [{"delta": {"content": "\u00e9\u4e16"}}]},
    {"model": "m-rewritten", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2,
                                                       "prompt_tokens_details": {"cached_tokens": 5}}},
]  # fmt: skip
# An event whose JSON spans two data lines (the SSE spec joins them with a newline): held to its blank line,
# then read and put back on one line.
SPLIT_EVENT = (b'data: {"model":"m-rewritten",', b'data: "choices":[{"delta":{"content":"b"}}]}')
SPLIT_PUT_BACK = b"data: " + orjson.dumps({"model": "m", "choices": [{"delta": {"content": "b"}}]})
# The SSE spec's three line ends (qa34a F4: a lone CR was not one to the scanner, the stream held whole).
EOLS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def _stream(eol: bytes) -> tuple[bytes, bytes]:
    """The stream with ``eol`` line ends, and what the rewriting scanner makes of it (model ``m``)."""
    src, out = bytearray(), bytearray()
    for i, e in enumerate(STREAM_EVENTS):
        line = b"data: " + orjson.dumps(e)
        src += line + eol + eol
        out += line.replace(b'"model":"m-rewritten"', b'"model":"m"') + eol + eol
        if i == 0:
            src += SPLIT_EVENT[0] + eol + SPLIT_EVENT[1] + eol + eol
            out += SPLIT_PUT_BACK + eol + eol
    src += b"data: [DONE]" + eol + eol
    out += b"data: [DONE]" + eol + eol
    return bytes(src), bytes(out)


def _scanned(eol: bytes, pieces: list[bytes]) -> None:
    src, want = _stream(eol)
    passthrough, rewriting = SSEScanner(), SSEScanner(rewrite_to="m")
    out_pass = b"".join(passthrough.feed(p) for p in pieces) + passthrough.finish()
    out_rw = b"".join(rewriting.feed(p) for p in pieces) + rewriting.finish()
    assert out_pass == src  # untouched, byte for byte
    assert out_rw == want
    for scanner in (passthrough, rewriting):
        assert scanner.usage is not None
        assert (
            scanner.usage.prompt_tokens,
            scanner.usage.completion_tokens,
            scanner.usage.cached_tokens,
        ) == (
            12,
            2,
            5,
        )
        assert scanner.saw_output


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_sse_scanner_is_independent_of_chunking(eol: bytes, data: st.DataObject) -> None:
    src = _stream(eol)[0]
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(src) - 1), max_size=12, unique=True))
    bounds = [0, *sorted(cuts), len(src)]
    _scanned(eol, [src[a:b] for a, b in itertools.pairwise(bounds)])


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
def test_sse_scanner_byte_by_byte_holds_a_line_at_most(eol: bytes) -> None:
    """Every cut (a CRLF's CR and LF in two chunks among them); each event goes out once its line ends."""
    src = _stream(eol)[0]
    _scanned(eol, [src[i : i + 1] for i in range(len(src))])
    scanner = SSEScanner(rewrite_to="m")
    longest = max(map(len, src.splitlines()))
    out = bytearray()
    for i in range(len(src)):
        out += scanner.feed(src[i : i + 1])
        assert len(scanner._tail) <= longest + 1  # (a CR whose LF may follow, at most)
        if src[: i + 1].endswith(eol + eol):
            # An event complete (a held one read at its blank line): none of it waits for the next chunk.
            assert out.count(eol + eol) == src[: i + 1].count(eol + eol)


def test_sse_scanner_bounds_an_endless_line() -> None:
    scanner = SSEScanner(rewrite_to="m")
    huge = b"data: " + b"x" * (2 << 20)
    out = scanner.feed(huge[: 1 << 20]) + scanner.feed(huge[1 << 20 :]) + scanner.feed(b"\n\n")
    assert out == huge + b"\n\n"  # forwarded untouched, never held whole
    assert len(scanner._tail) == 0


def test_gateway_in_another_body_mode_is_refused() -> None:
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

    ctx = SessionContext(Raising(RuntimeError()), lambda: {EP.address: EP}, clock=time.monotonic)
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map({":method": "POST"})))
    msg.protocol_config.request_body_mode = processing_mode_pb2.ProcessingMode.BUFFERED
    (out,) = Session(ctx).handle(msg)
    assert out.immediate_response.status.code == 500
    assert b"FULL_DUPLEX_STREAMED" in out.immediate_response.body


def test_weighted_rewrite_follows_the_weights() -> None:
    from kvgate.config.gateway import RewriteRule, RewriteTarget
    from kvgate.config.rewrite import ModelRewriter

    rw = ModelRewriter(
        [
            RewriteRule(["base"], [RewriteTarget("base", 3), RewriteTarget("canary", 1)]),
            RewriteRule([], [RewriteTarget("fallback", 1)]),
        ],
        seed=7,
    )
    draws = [rw("base") for _ in range(4000)]
    # Drawing the client's own model leaves the request untouched (None); a quarter goes to the canary.
    assert set(draws) == {None, "canary"}
    assert 0.22 < draws.count("canary") / len(draws) < 0.28
    assert rw("anything-else") == "fallback"  # a rule without matches applies to every model


class Learning:
    """Records what each first token may teach (the Director's ``learn``)."""

    def __init__(self) -> None:
        self.learn: list[bool] = []

    def pick(self, req: InferenceRequest) -> PickResult:
        return PickResult([EP], "p", {})

    def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None: ...

    def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None:
        self.learn.append(learn)

    def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Any, ok: bool) -> None: ...


def _reply(status: str, stream: bool) -> list[bool]:
    d = Learning()
    s = Session(SessionContext(d, lambda: {EP.address: EP}, clock=time.monotonic))
    req_headers = header_map({":method": "POST", ":path": "/v1/completions"})
    s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=req_headers)))
    body = orjson.dumps({"model": "m", "prompt": "p", "stream": stream})
    s.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
    ctype = "text/event-stream" if stream else "application/json"
    resp_headers = header_map({":status": status, "content-type": ctype})
    s.handle(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=resp_headers)))
    chunk = b'data: {"choices":[{"text":"a"}]}\n\ndata: [DONE]\n\n' if stream else b'{"choices":[]}'
    s.handle(pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=True)))
    s.close()
    return d.learn


def test_only_streamed_successful_replies_teach_latency() -> None:
    # As the HTTP door (tests/gateway/test_latency_learning.py): a non-streamed reply's first token
    # comes with its last, so its time is the whole generation, not a TTFT.
    assert _reply("200", stream=False) == [False]
    assert _reply("200", stream=True) == [True]
