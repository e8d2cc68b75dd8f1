"""Review s21-fixes-a L1: a token-id completions batch whose first prompt is cached counts no prefill.

47de7fb makes the batch's estimate every prompt (16 x 512 = 8,192 tokens) but prefix matching still hashes
the first prompt only (``_prompt``: ``batch[0]``), and the cost scorer spreads the estimate over those
blocks (``per_block = p / len(hashes)``): the first prompt's full hit reads as the whole batch cached, so
the Director's ``pending_prefill_tokens`` at the holder is 0 for 7,680 new tokens (the latency model, the
utilization detector and the next picks see an idle prefill queue). docs/scheduling.md/CHANGELOG say a
batch's prefill counts every prompt. (Before 47de7fb the estimate was the first prompt's: 0 of 512.)"""

from __future__ import annotations

import random

import orjson

from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.openai.request import COMPLETIONS, RequestPolicy, inference_request, parse_body

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def _req(prompt: object, rid: str):  # type: ignore[no-untyped-def]
    raw = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})
    return inference_request(parse_body(COMPLETIONS, raw), request_id=rid, model="m", policy=RequestPolicy())


def test_a_batch_with_a_cached_first_prompt_still_prefills_the_others() -> None:
    d = build_director("kvgate", EndpointStore.from_addresses([A, B]), clock=lambda: 0.0, seed=1)
    rng = random.Random(0)
    first = [rng.randrange(1000, 30000) for _ in range(512)]
    warm = _req(first, "warm")
    (ep,) = d.pick(warm).endpoints
    d.on_dispatched(warm, ep)
    d.on_first_token(warm, ep)
    d.on_finished(warm, ep, None, True)
    others = [[rng.randrange(1000, 30000) for _ in range(512)] for _ in range(15)]
    batch = _req([first, *others], "batch")
    (to,) = d.pick(batch).endpoints
    d.on_dispatched(batch, to)
    assert to.inflight.pending_prefill_tokens >= 15 * 512, (to.address, to.inflight)
