"""A request's ``n`` choices (and a completions batch) are the sequences vLLM runs for it, and the picker's
in-flight accounting weighs it so (review s21-qa F5: a request running 16 sequences counted as one, so new
requests went to the pod running 8x the sequences).

Pod A runs one stream, pod B two streams of ``n: 1`` (``max_tokens: 500`` each), all generating; the next 10
requests go to the less loaded pod. A's stream with ``n: 1`` (control): A is the less loaded. A's stream with
``n: 16``, or a completions batch of 16 prompts: B is. Envoy's side played over real ext_proc gRPC against a
real EppServer on loopback, the default ``kvgate`` policy (adapted from the review's
``test_qa21_epp_n_choices.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.pickers import build_picker
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel
from kvgate.openai.request import RequestPolicy

A, B = "127.0.0.51:29905", "127.0.0.52:29906"  # (never connected to; two IPs: a hint names pods by IP)
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def _chat(i: int, n: int) -> tuple[str, dict[str, Any]]:
    content = f"{i} " + "tok " * 300
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "max_tokens": 500,
    }
    return CHAT, {**body, "n": n}


def _batch(i: int, prompts: int) -> tuple[str, dict[str, Any]]:
    prompt = [f"{i} {k} " + "tok " * (300 // prompts) for k in range(prompts)]
    return COMPLETIONS, {"model": "m", "prompt": prompt, "stream": True, "max_tokens": 500}


# A's stream, and the pod that should get the new requests.
CASES = {
    "n1-control": (_chat(0, 1), A),
    "n16": (_chat(0, 16), B),
    "batch1-control": (_batch(0, 1), A),
    "batch16": (_batch(0, 16), B),
}


def _headers(path: str, raw: bytes) -> dict[str, str]:
    return {":method": "POST", ":path": path, ":authority": "g", ":scheme": "http",
            "content-type": "application/json", "content-length": str(len(raw))}  # fmt: skip


async def _run(a_stream: tuple[str, dict[str, Any]]) -> tuple[dict[str, int], Any]:
    store = EndpointStore.from_addresses([A, B])
    ctx = SessionContext(
        build_picker(store), lambda: {e.address: e for e in store.all()}, clock=time.monotonic,
        observer=EppMetrics(), policy=RequestPolicy(objectives={}),
    )  # fmt: skip
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=0, metrics_port=0))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.ExternalProcessorStub(ch)
    streams: list[Exchange] = []

    async def stream(target: str, path: str, body: dict[str, Any]) -> None:
        raw = orjson.dumps(body)
        ex = await Exchange(stub, timeout=10).__aenter__()
        streams.append(ex)
        out = await ex.send_request(_headers(path, raw), raw, subset=[target])  # (placed on its pod)
        assert out.destination == target
        await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served=target)
        delta = {"content": "x"} if path == CHAT else None
        choice = {"index": 0, "delta": delta} if delta else {"index": 0, "text": "x"}
        event = b"data: " + orjson.dumps({"id": "c", "model": "m", "choices": [choice]}) + b"\n\n"
        for _ in range(2):  # generating: past its first token
            await ex.send_response_chunk(event)
            assert (await ex.read()).WhichOneof("response") == "response_body"

    try:
        await stream(A, *a_stream)
        await stream(B, *_chat(1, 1))
        await stream(B, *_chat(2, 1))
        loads = {e.address: (e.inflight.requests, e.inflight.decoding, e.inflight.pending_decode_tokens)
                 for e in store.all()}  # fmt: skip
        picks = {A: 0, B: 0}
        for k in range(10):
            raw = orjson.dumps(
                {"model": "m", "messages": [{"role": "user", "content": f"new {k}"}], "max_tokens": 5}
            )
            async with Exchange(stub, timeout=10) as ex:
                out = await ex.send_request(_headers(CHAT, raw), raw)
                picks[out.destination] += 1
                await ex.send_response_headers(
                    200, {"content-type": "application/json"}, served=out.destination
                )
                usage = b'{"usage":{"prompt_tokens":3,"completion_tokens":5}}'
                await ex.send_response_chunk(usage, end_of_stream=True)
                await ex.read()
        return picks, loads
    finally:
        for ex in streams:
            with contextlib.suppress(BaseException):
                ex.cancel()
                await ex.close()
        await ch.close()
        await server.stop(0)


@pytest.mark.parametrize("case", list(CASES))
def test_n_choices_and_batches_count_as_the_sequences_vllm_runs(case: str) -> None:
    a_stream, want = CASES[case]
    picks, loads = asyncio.run(_run(a_stream))
    other = B if want == A else A
    assert picks[want] > picks[other], f"{case}: picks {picks}, loads (requests, decoding, decode) {loads}"
    # The accounting itself: A's one stream is its sequences, running, with n x max_tokens still to decode.
    body = a_stream[1]
    seqs = body.get("n", 1) * (len(body["prompt"]) if isinstance(body.get("prompt"), list) else 1)
    assert loads[A] == (seqs, seqs, seqs * 500)
    assert loads[B] == (2, 2, 1000)
