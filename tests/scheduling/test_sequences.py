"""A request of ``n`` choices (or a completions batch) is ``InferenceRequest.sequences`` in the Director's
in-flight accounting, as vLLM runs it (review s21-qa F5): running slots, decode still to come, the
concurrency detector's bounds, the cost scorer's load; learning stays per sequence."""

from __future__ import annotations

from typing import Any

import orjson

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.openai.request import CHAT, COMPLETIONS, RequestPolicy, inference_request, parse_body
from kvgate.requestcontrol.director import DEFAULT_DECODE_TOKENS
from kvgate.scheduling.types import InferenceRequest, Usage

A = "10.0.0.1:8000"


def _concurrency(max_concurrency: int, max_pending: int = 0) -> Any:
    cfg = {
        "saturationDetector": {
            "type": "concurrency-detector",
            "parameters": {"maxConcurrency": max_concurrency, "maxPendingRequests": max_pending},
        },
        "plugins": [{"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    return build_director(cfg, EndpointStore.from_addresses([A]), clock=lambda: 0.0)


def _req(kind: str, body: dict[str, Any], rid: str = "r") -> InferenceRequest:
    raw = parse_body(kind, orjson.dumps({"model": "m", **body}))
    return inference_request(raw, request_id=rid, model="m", policy=RequestPolicy())


def test_a_request_counts_its_sequences_from_dispatch_to_finish() -> None:
    d = _concurrency(100)
    (e,) = d.store.all()
    r = _req(CHAT, {"messages": [{"role": "user", "content": "x" * 400}], "n": 8, "max_tokens": 50})
    assert r.sequences == 8
    d.on_dispatched(r, e)
    inf = e.inflight
    assert (inf.requests, inf.decoding, inf.pending_decode_tokens) == (8, 0, 400)
    assert inf.pending_prefill_tokens == r.prompt_tokens  # (one prompt: its choices share its blocks)
    d.on_first_token(r, e)
    assert (inf.requests, inf.decoding, inf.pending_prefill_tokens, inf.started) == (8, 8, 0, 8)
    d.on_finished(r, e, Usage(prompt_tokens=100, completion_tokens=400), ok=True)
    assert (inf.requests, inf.decoding, inf.pending_decode_tokens) == (0, 0, 0)


def test_a_batch_counts_every_prompt_and_choice() -> None:
    d = _concurrency(100)
    (e,) = d.store.all()
    r = _req(COMPLETIONS, {"prompt": ["a" * 40, "b" * 80, "c" * 120], "n": 2, "max_tokens": 10})
    d.on_dispatched(r, e)
    assert (r.sequences, e.inflight.requests, e.inflight.pending_decode_tokens) == (6, 6, 60)
    assert e.inflight.pending_prefill_tokens == r.prompt_tokens >= (40 + 80 + 120) // 4  # every prompt
    d.on_finished(r, e, None, ok=False)  # (no first token: the prefill goes too)
    assert (e.inflight.requests, e.inflight.pending_prefill_tokens, e.inflight.pending_decode_tokens) == (
        0,
        0,
        0,
    )


def test_the_concurrency_detector_is_saturated_by_one_request_of_as_many_choices() -> None:
    one = _req(CHAT, {"messages": [{"role": "user", "content": "hi"}], "n": 1}, "one")
    many = _req(CHAT, {"messages": [{"role": "user", "content": "hi"}], "n": 8}, "many")
    for r, saturated in ((one, False), (many, True)):
        d = _concurrency(8)
        (e,) = d.store.all()
        d.on_dispatched(r, e)
        d.on_first_token(r, e)
        assert d.saturated(one) is saturated, r.request_id  # maxConcurrency 8: 8 sequences running
    # maxPendingRequests counts the sequences waiting for their first token as well.
    d = _concurrency(100, max_pending=4)
    (e,) = d.store.all()
    d.on_dispatched(_req(CHAT, {"messages": [{"role": "user", "content": "hi"}], "n": 4}, "p"), e)
    assert d.saturated(one)


def test_learning_is_per_sequence() -> None:
    d = _concurrency(100)
    (e,) = d.store.all()
    r = _req(CHAT, {"messages": [{"role": "user", "content": "hi"}], "n": 4})  # no max_tokens: the mean
    d.on_dispatched(r, e)
    assert e.inflight.pending_decode_tokens == 4 * DEFAULT_DECODE_TOKENS
    d.on_first_token(r, e)
    d.on_finished(r, e, Usage(prompt_tokens=3, completion_tokens=4 * DEFAULT_DECODE_TOKENS), ok=True)
    assert d.mean_decode == DEFAULT_DECODE_TOKENS  # 4 choices of the mean each, not 4 x the mean
