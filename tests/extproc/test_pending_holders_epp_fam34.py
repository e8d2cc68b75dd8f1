"""``kvgate epp`` with ``pendingHolders`` (issue #16, fam34): the pod holds a pick's blocks in the prefix
index once the response's first token passes through ext_proc, and a request that fails before that
leaves no holder. Real gRPC on loopback: the test plays Envoy; the pods are never dialled."""

from __future__ import annotations

from pathlib import Path

import orjson

from kvgate.extproc.testing import Exchange
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import CycleState
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.types import InferenceRequest

from .conftest import Epp, StartEpp

POLICY = Path(__file__).resolve().parents[2] / "docs/benchmarks/policies/kvgate-pending-holders.yaml"
A, B = "127.0.0.41:29401", "127.0.0.42:29402"
PROMPT = "the tenant's long system prompt, say " * 40


def _request(prompt: str) -> tuple[dict[str, str], bytes]:
    raw = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 4, "stream": True})
    headers = {":method": "POST", ":path": "/v1/completions", ":authority": "g", ":scheme": "http",
               "content-type": "application/json", "content-length": str(len(raw))}  # fmt: skip
    return headers, raw


def _index(epp: Epp) -> tuple[Director, PrefixCacheScorer]:
    d = epp.picker.inner
    assert isinstance(d, Director)
    scorer = d.handle.plugin("prefix-cache-scorer")
    assert isinstance(scorer, PrefixCacheScorer) and scorer.pending_holders
    return d, scorer


def _held(epp: Epp, address: str) -> int:
    """Blocks of the prompt's head the index itself records ``address`` holding (pending picks aside)."""
    d, scorer = _index(epp)
    cycle = CycleState(InferenceRequest("probe", "m", prompt_text=PROMPT + "probe"), 0.0)
    scorer.prepare(cycle, d.store.all())
    m = prefix_match(cycle)
    assert m is not None and m.hashes
    return scorer.index.match(m.hashes, [address])[0]


async def test_the_first_token_through_ext_proc_makes_the_pod_a_holder(start_epp: StartEpp) -> None:
    epp = await start_epp([A, B], policy=str(POLICY))
    _, scorer = _index(epp)
    headers, raw = _request(PROMPT + "first question")
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(headers, raw)
        pod = out.destination
        assert pod in (A, B)
        assert _held(epp, pod) == 0 and pod in scorer._pending_at  # picked: pending, not held
        await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served=pod)
        chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "text": "Hi"}]}
        await ex.send_response_chunk(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await ex.read()
        assert _held(epp, pod) == 23 and not scorer._pending  # its prefill ran: the pod holds it
        await ex.send_response_chunk(b"data: [DONE]\n\n", end_of_stream=True)
        await ex.read()
    assert len(epp.picker.calls.finished) == 1


async def test_a_request_the_pod_fails_before_its_first_token_leaves_no_holder(start_epp: StartEpp) -> None:
    epp = await start_epp([A, B], policy=str(POLICY))
    _, scorer = _index(epp)
    headers, raw = _request(PROMPT + "first question")
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(headers, raw)
        pod = out.destination
        assert pod in scorer._pending_at
        await ex.send_response_headers(503, {"content-type": "application/json"}, served=pod)
        await ex.send_response_chunk(b'{"error": {"message": "overloaded"}}', end_of_stream=True)
        await ex.read()
    assert len(epp.picker.calls.finished) == 1 and not epp.picker.calls.finished[0][3]
    assert _held(epp, A) == _held(epp, B) == 0 and not scorer._pending and not scorer._pending_at
