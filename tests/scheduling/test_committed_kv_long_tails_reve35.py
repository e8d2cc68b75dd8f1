"""rev-e35 F1: committedKv with the approximate prefix source: the hashes cover at most
maxPrefixBlocksToMatch blocks (~4,096 tokens), so a longer prompt's tail past them is its own. Before,
the whole prompt was spread over the window's keys: a second in-flight prompt sharing the window but with a
different long tail added nothing (its tail counted as held)."""

from __future__ import annotations

from typing import Any

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.types import InferenceRequest, prompt_tokens

from .helpers import fleet

HEAD = "".join(f"The shared document, paragraph {i}, says something long enough. " for i in range(400))


def _director() -> Any:
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            spec.parameters = {**(spec.parameters or {}), "committedKv": True}
    store = fleet(1)
    d = build_director(cfg, store, clock=lambda: 0.0, seed=0)
    return d, d.handle.find(KVGateCostScorer).commit, store


def test_distinct_long_tails_behind_one_window_are_each_held() -> None:
    d, led, store = _director()
    (ep,) = store.all()
    tails = {t: "".join(f"Tenant {t}'s own question, part {i}, differs. " for i in range(600)) for t in "AB"}
    peaks = []
    for t in "AB":
        r = InferenceRequest(f"r{t}", "m", prompt_text=HEAD + tails[t], max_tokens=1)
        d.on_dispatched(r, d.pick(r).primary)
        peaks.append(led.peak(ep.address, 0.0))
    head = prompt_tokens(0, HEAD, None)
    whole = prompt_tokens(0, HEAD + tails["A"], None)
    b_tail = prompt_tokens(0, HEAD + tails["B"], None) - head
    assert head > 4096  # past the window: the prompts share every hashed block
    # A alone holds its whole prompt (and its 1 output token): blocks + its own tail, no more, no less.
    assert abs(peaks[0] - (whole + 1)) <= 1, (peaks, whole)
    # B's own tail is KV that B alone holds: the peak grows by about it.
    assert peaks[1] - peaks[0] >= 0.9 * b_tail, (peaks, head, b_tail)

    # A prompt inside the window is all blocks, as before: the same one again adds at most a block's part.
    d, led, store = _director()
    text = HEAD[:2000]
    p = prompt_tokens(0, text, None)
    for rid in ("s1", "s2"):
        r = InferenceRequest(rid, "m", prompt_text=text, max_tokens=1)
        d.on_dispatched(r, d.pick(r).primary)
        assert led.peak(ep.address, 0.0) - (p + 1) <= (16 if rid == "s2" else 1)
