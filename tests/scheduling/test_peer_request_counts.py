"""The peers' baselines count requests as the peers do (review s21-fixes-a L7).

sglang-router's ``cache_aware`` load is its in-flight request count (reference/peers.md), and a
least-request router counts requests: a request asking for ``n`` choices is one to them, though vLLM runs
``n`` sequences (``InFlight.requests``, the weight kvgate's own policy reads). Their models read
``InFlight.calls``. Before, a request with ``n: 100`` read as 100 requests to both."""

from __future__ import annotations

import orjson

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.openai.request import CHAT, RequestPolicy, inference_request, parse_body

A, B = "10.0.0.1:8000", "10.0.0.2:8000"
TEXT = "summarize the quarterly report for the northern region " * 8


def _req(rid: str, n: int):  # type: ignore[no-untyped-def]
    body = {"model": "m", "n": n, "max_tokens": 8, "messages": [{"role": "user", "content": TEXT}]}
    return inference_request(
        parse_body(CHAT, orjson.dumps(body)), request_id=rid, model="m", policy=RequestPolicy()
    )


def test_sglang_cache_aware_counts_a_request_with_n_choices_once() -> None:
    d = build_director("sglang-cache-aware", EndpointStore.from_addresses([A, B]), clock=lambda: 0.0, seed=1)
    first = _req("r1", 100)  # (past balanceAbsThreshold, 64, when counted as 100)
    (holder,) = d.pick(first).endpoints
    d.on_dispatched(first, holder)
    # One request in flight there: balanced to sglang-router, so the cache decides (the same text).
    second = _req("r2", 1)
    (to,) = d.pick(second).endpoints
    assert to is holder, to.address
    assert (holder.inflight.requests, holder.inflight.calls) == (100, 1)


def test_least_request_counts_a_request_with_n_choices_once() -> None:
    d = build_director("least-request", EndpointStore.from_addresses([A, B]), clock=lambda: 0.0, seed=1)
    store = d.store
    a, b = store.get(A), store.get(B)
    assert a is not None and b is not None
    d.on_dispatched(_req("r1", 16), a)  # one request, 16 sequences
    d.on_dispatched(_req("r2", 1), b)
    d.on_dispatched(_req("r3", 1), b)  # two requests
    (to,) = d.pick(_req("r4", 1)).endpoints
    assert to is a, to.address
    d.on_finished(_req("r1", 16), a, None, True)
    assert (a.inflight.requests, a.inflight.calls) == (0, 0)
