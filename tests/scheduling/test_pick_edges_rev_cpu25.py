"""Guards from review s25-rev-cpu25 (F4): session 25's inlined ``prefix_match`` / skipped
``uncached_fraction`` / guarded ``_forget`` on the edge prompts test_pick_calls_cpu25.py leaves out: an empty
prompt, a prompt of no whole block, token ids, a LoRA adapter, for both the cost scorer's ``on_picked`` and
the prefix scorer's (whose no-hash return test_pick_calls_cpu25.py does not reach). They pass on main (no
behaviour change): each fails when the line it names is broken."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling import metrics
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer, prompt_tokens
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.types import InferenceRequest, Usage

LONG = "the shared context of many requests, " * 40


def _hits() -> float:
    for fam in metrics.PREFIX_HIT_RATIO.collect():
        for s in fam.samples:
            if s.name.endswith("_count"):
                return s.value
    raise AssertionError("no _count sample")


def _plugin(d: Any, cls: type) -> Any:
    (p,) = [p for p in d.handle.plugins.values() if isinstance(p, cls)]
    return p


CASES = {
    "empty prompt": dict(prompt_text="", prompt_tokens=0),
    "short prompt": dict(prompt_text="hi", prompt_tokens=1),
    "long prompt": dict(prompt_text=LONG, prompt_tokens=len(LONG) // 4),
    "long prompt, LoRA": dict(prompt_text=LONG, prompt_tokens=len(LONG) // 4, lora_adapter="ad1"),
    "empty prompt, LoRA": dict(prompt_text="", prompt_tokens=0, lora_adapter="ad1"),
    "token ids": dict(token_ids=list(range(2000)), prompt_tokens=2000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_edge_prompts_pick_and_account_as_the_match_says(name: str) -> None:
    now = 100.0
    store = EndpointStore(
        Endpoint(address=a, metrics=EndpointMetrics(updated_at=now)) for a in ("a:1", "b:1")
    )
    d = build_director(policy_config("kvgate"), store, clock=lambda: now, seed=0)
    cost = _plugin(d, KVGateCostScorer)
    prefix = _plugin(d, PrefixCacheScorer)
    kw = dict(CASES[name])
    model = "ad1" if kw.get("lora_adapter") else "m"
    seen: list[Any] = []
    real = cost.on_picked

    def spy(cycle: Any, endpoint: Any) -> None:
        seen.append(prefix_match(cycle))
        real(cycle, endpoint)

    cost.on_picked = spy  # type: ignore[method-assign]
    for i in range(3):  # (the second and third find the first's blocks, where it has any)
        req = InferenceRequest(f"r{i}", model, max_tokens=8, **kw)  # type: ignore[arg-type]
        before, hits, seq = cost.mean_uncached, _hits(), prefix.index.seq
        picked = d.pick(req).endpoints[0]
        m = seen[-1]
        p = req.prompt_tokens
        if p <= 0:
            p = prompt_tokens(p, req.prompt_text, req.token_ids)
        frac = m.uncached_fraction(picked.address) if m is not None else 1.0
        assert cost.mean_uncached == before + 0.05 * (p * frac - before), name
        hashed = m is not None and bool(m.hashes)
        # (the prefix scorer's on_picked: no hashed block, no index entry and no hit-ratio sample)
        assert (_hits() > hits) == hashed, name
        assert (prefix.index.seq > seq) == hashed, name
        d.on_dispatched(req, picked)
        d.on_first_token(req, picked, learn=False)
        d.on_finished(req, picked, Usage(p, 8), True)
        assert not cost._waiting and not cost._waiting_at and not cost._tails, name
    assert not d._tracks
