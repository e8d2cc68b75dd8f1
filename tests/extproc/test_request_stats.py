"""``kvgate epp``'s per-request families, as ``kvgate serve``'s (``kvgate.openai.requeststats``):
``inference_objective_request_total``, ``..._request_duration_seconds`` (request headers to the response's
end), ``..._input_tokens`` / ``..._output_tokens`` (the response's usage, where the EPP sees it), once
per request a model server answered, under bounded model labels. The three-door comparison is
``test_error_counts.py``; these are the EPP's own cases (a stream's usage chunk, ``response_body_mode:
NONE``, an unknown model). Before, the EPP had none of these families."""

from __future__ import annotations

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.session import Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.openai.labels import ModelLabels

from .pickers import EP, OnePicker, picked_session
from .test_error_counts import request_stats

_MODE = processing_mode_pb2.ProcessingMode


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _picked(metrics: EppMetrics, clock: _Clock, model: str = "m", response_bodies: bool = True) -> Session:
    ctx = SessionContext(OnePicker(), lambda: {EP.address: EP}, clock=clock, observer=metrics)

    def body_arrives() -> None:  # inside the duration (it starts at the request headers)
        clock.now += 0.5

    body = {"model": model, "prompt": "p", "stream": True}
    return picked_session(ctx, body, response_bodies=response_bodies, before_body=body_arrives)


def _headers(s: Session, status: int, content_type: str = "text/event-stream") -> None:
    h = pb.HttpHeaders(headers=header_map({":status": str(status), "content-type": content_type}))
    s.handle(pb.ProcessingRequest(response_headers=h))


def _body(s: Session, data: bytes, eos: bool) -> None:
    s.handle(pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos)))


USAGE_EVENT = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}\n\n'
TOKEN_EVENT = b'data: {"choices": [{"text": "a"}]}\n\n'


def test_a_stream_counts_once_at_its_end_with_its_usage_chunks_tokens() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    clock = _Clock()
    s = _picked(metrics, clock)
    _headers(s, 200)
    _body(s, TOKEN_EVENT, eos=False)
    assert request_stats(metrics.registry) == {}  # not before its end
    clock.now += 1.5
    _body(s, USAGE_EVENT + b"data: [DONE]\n\n", eos=True)
    s.close()
    assert request_stats(metrics.registry) == {
        ("inference_objective_request_total", "m", "m"): 1,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 1,
        ("inference_objective_input_tokens_count", "m", "m"): 1,
        ("inference_objective_input_tokens_sum", "m", "m"): 7,
        ("inference_objective_output_tokens_count", "m", "m"): 1,
        ("inference_objective_output_tokens_sum", "m", "m"): 3,
    }
    labels = {"model_name": "m", "target_model_name": "m"}
    duration = "inference_objective_request_duration_seconds_sum"
    assert metrics.registry.get_sample_value(duration, labels) == 2.0


def test_a_stream_without_a_usage_chunk_counts_no_tokens() -> None:
    """The EPP does not add ``stream_options.include_usage`` (``kvgate serve`` does): a client that did
    not ask for usage gives the EPP no token counts."""
    metrics = EppMetrics(models=ModelLabels(["m"]))
    s = _picked(metrics, _Clock())
    _headers(s, 200)
    _body(s, TOKEN_EVENT + b"data: [DONE]\n\n", eos=True)
    assert request_stats(metrics.registry) == {
        ("inference_objective_request_total", "m", "m"): 1,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 1,
    }


def test_with_response_bodies_off_requests_count_at_the_streams_end_without_tokens() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    clock = _Clock()
    for status in (200, 500):
        s = _picked(metrics, clock, response_bodies=False)
        _headers(s, status, "application/json")
        clock.now += 1.0
        s.close()  # Envoy ends the stream with the HTTP stream
    labels = {"model_name": "m", "target_model_name": "m"}
    assert request_stats(metrics.registry) == {
        ("inference_objective_request_total", "m", "m"): 2,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 2,
    }
    duration = "inference_objective_request_duration_seconds_sum"
    assert metrics.registry.get_sample_value(duration, labels) == 3.0


def test_no_answer_no_count_and_an_unknown_models_error_reply_is_other() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    clock = _Clock()
    s = _picked(metrics, clock)
    s.close()  # gone before any response headers: client_gone on the error metric, no request counted
    s = _picked(metrics, clock, model="made-up")
    _headers(s, 500, "application/json")
    _body(s, b'{"error": {"message": "boom"}}', eos=True)
    assert request_stats(metrics.registry) == {
        ("inference_objective_request_total", "other", "other"): 1,
        ("inference_objective_request_duration_seconds_count", "other", "other"): 1,
    }


def test_an_error_replys_usage_is_not_observed() -> None:
    """rev-metrics N1: tokens only from a success's usage, as ``kvgate serve`` (``resp.status < 300``) and
    the multi-cluster gateway (a 2xx's): an error body that carries ``usage`` counts no tokens (before:
    7/3 observed)."""
    metrics = EppMetrics(models=ModelLabels(["m"]))
    s = _picked(metrics, _Clock())
    _headers(s, 500, "application/json")
    error = b'{"error": {"message": "boom"}, "usage": {"prompt_tokens": 7, "completion_tokens": 3}}'
    _body(s, error, eos=True)
    s = _picked(metrics, _Clock())
    _headers(s, 503)
    _body(s, USAGE_EVENT + b"data: [DONE]\n\n", eos=True)
    assert request_stats(metrics.registry) == {
        ("inference_objective_request_total", "m", "m"): 2,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 2,
    }


def test_a_body_less_request_is_not_counted() -> None:
    """``GET /v1/models`` or a probe routed through the EPP (picked on its headers): not an inference
    request, as ``kvgate serve`` does not count its own ``GET``s."""
    metrics = EppMetrics(models=ModelLabels(["m"]))
    ctx = SessionContext(OnePicker(), lambda: {EP.address: EP}, clock=_Clock(), observer=metrics)
    s = Session(ctx)
    headers = header_map({":method": "GET", ":path": "/v1/models", "x-gateway-model-name": "m"})
    first = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=headers, end_of_stream=True))
    assert s.handle(first)[0].WhichOneof("response") == "request_headers"
    _headers(s, 200, "application/json")
    _body(s, b'{"object": "list", "data": []}', eos=True)
    s.close()
    assert request_stats(metrics.registry) == {}


def test_a_usage_tail_reads_the_last_usage_event_of_a_relayed_stream() -> None:
    """``kvgate serve --clusters`` reads a relayed stream's usage from a bounded tail (as ``kvgate
    serve``'s pass-through relay), however the stream was chunked."""
    from kvgate.openai.usage import UsageTail

    stream = TOKEN_EVENT * 2000 + USAGE_EVENT + b"data: [DONE]\n\n"
    for size in (7, 1000, 1 << 20):
        tail = UsageTail()
        for i in range(0, len(stream), size):
            tail.feed(stream[i : i + size])
        usage = tail.usage()
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
    tail = UsageTail()
    tail.feed(TOKEN_EVENT + b"data: [DONE]\n\n")
    assert tail.usage() is None


def test_a_cut_streams_usage_is_not_observed() -> None:
    """rev-final F2: a stream that ends before its end (cut, or its client left: Envoy ends the ext_proc
    stream) after its usage chunk passed counts no tokens, as ``kvgate serve`` and ``kvgate serve
    --clusters`` (the EPP already did so; ``kvgate serve``'s transformed relay did not, fixed with this
    pin)."""
    metrics = EppMetrics(models=ModelLabels(["m"]))
    s = _picked(metrics, _Clock())
    _headers(s, 200)
    _body(s, TOKEN_EVENT + USAGE_EVENT, eos=False)
    s.close()
    assert request_stats(metrics.registry) == {
        ("inference_objective_request_total", "m", "m"): 1,
        ("inference_objective_request_duration_seconds_count", "m", "m"): 1,
    }
