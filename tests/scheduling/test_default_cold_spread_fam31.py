"""The default profile prices a decode-heavy cold request away from the cache serving hits (fam31, issue
#16): the ``kvgate`` policy turns on the cost scorer's ``coldSpread`` with ``coldSpreadDecodeHeavy``
(validated on fresh seeds: docs/benchmarks/fleet-multiturn-s31.md), and the profiles copied from it
(the precise profiles, the deploy manifests' ConfigMaps: tests/extproc/test_deploy.py) carry it too."""

from __future__ import annotations

from typing import Any

import yaml

from kvgate.bench.precise import PRECISE_POLICIES
from kvgate.config.director import build_director
from kvgate.config.policies import policy_config, precise_policy
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.types import InferenceRequest

from .helpers import fleet

PREFIX = "You are a helpful assistant. " * 40  # ~1,160 chars, 18 blocks
COLD = "a one-off nobody holds " * 30  # ~690 chars, ~170 tokens, no block held anywhere


def _cost_params(doc: dict[str, Any]) -> dict[str, Any]:
    (plugin,) = [p for p in doc["plugins"] if p["type"] == "kvgate-cost-scorer"]
    params: dict[str, Any] = plugin.get("parameters") or {}
    return params


def test_the_default_profile_turns_on_cold_spread_for_decode_heavy_requests() -> None:
    d = build_director("kvgate", fleet(2), clock=lambda: 0.0, seed=0)
    (scorer,) = [p for p in d.handle.plugins.values() if isinstance(p, KVGateCostScorer)]
    assert scorer.cold_spread and scorer.cold_spread_decode_heavy
    assert scorer.cold_spread_window == 120.0  # the window stays the scorer's default


def test_the_precise_profiles_copy_it() -> None:
    on = {"coldSpread": True, "coldSpreadDecodeHeavy": True}
    assert on.items() <= _cost_params(precise_policy("", bind=False)).items()
    assert on.items() <= _cost_params(yaml.safe_load(PRECISE_POLICIES["kvgate-precise"])).items()


def test_a_decode_heavy_cold_request_goes_where_no_hits_are_served() -> None:
    # One endpoint served a prefix's hits (a tenant between its bursts); every load figure is equal
    # again when the cold requests come. A decode-heavy one-off (1,200 output tokens for ~170 prompt
    # tokens, the engine caching its output) costs more at the holder and goes to the other endpoint;
    # a prompt-heavy one (10 output tokens) is placed as before the flip: the costs tie.
    store = fleet(2)
    d = build_director(policy_config("kvgate"), store, clock=lambda: 0.0, seed=0)
    holder = None
    for i in range(6):
        r = InferenceRequest(f"r{i}", "m", prompt_text=PREFIX + f"q{i}", max_tokens=100)
        got = d.pick(r).primary
        holder = holder or got
        assert got is holder
        d.on_dispatched(r, got)
        d.on_finished(r, got, None, True)
    assert holder is not None
    other = next(e for e in store.all() if e is not holder)
    light_req = InferenceRequest("light", "m", prompt_text=COLD.replace("one-off", "question"), max_tokens=10)
    light = d.pick(light_req, explain=True)
    costs = light.explanation["costs"]
    assert costs[holder.address] == costs[other.address]
    d.on_dispatched(light_req, light.primary)
    d.on_finished(light_req, light.primary, None, True)
    heavy_req = InferenceRequest("heavy", "m", prompt_text=COLD, max_tokens=1200)
    heavy = d.pick(heavy_req, explain=True)
    costs = heavy.explanation["costs"]
    assert costs[holder.address] > costs[other.address] and heavy.primary is other
    d.on_dispatched(heavy_req, other)
    d.on_finished(heavy_req, other, None, True)
    # A warm request still goes to its holder.
    warm = InferenceRequest("warm", "m", prompt_text=PREFIX + "q9", max_tokens=100)
    assert d.pick(warm).primary is holder
