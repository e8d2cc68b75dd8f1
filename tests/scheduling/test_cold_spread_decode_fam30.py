"""``coldSpreadDecodeHeavy``: ``coldSpread``'s price is paid only by a cold request whose ``max_tokens``
exceeds its prompt tokens (a decode-heavy one-off); other cold prompts are placed as without it
(issue #16, fam30: docs/benchmarks/fleet-multiturn-s30.md)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.types import InferenceRequest

from .helpers import fleet

PREFIX = "You are a helpful assistant. " * 40  # ~1,160 chars, 18 blocks
COLD = "a one-off nobody holds " * 30  # ~690 chars, ~170 tokens, no block held anywhere


COLD_KEYS = ("coldSpread", "coldSpreadDecodeHeavy")


def _director(params: dict[str, Any]) -> tuple[Director, EndpointStore]:
    """The kvgate policy with exactly the cold keys in ``params`` set: since fam31 the policy turns both on,
    and these tests compare the forms (none, plain ``coldSpread``, decode-heavy only) side by side."""
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            kept = {k: v for k, v in (spec.parameters or {}).items() if k not in COLD_KEYS}
            spec.parameters = {**kept, **params}
    store = fleet(2)
    return build_director(cfg, store, clock=lambda: 0.0, seed=0), store


def _cold_costs(params: dict[str, Any], max_tokens: int) -> tuple[float, float]:
    """(holder's, other's) cost of a cold prompt after six warm requests were served at one endpoint."""
    d, store = _director(params)
    holder = None
    for i in range(6):
        r = InferenceRequest(f"r{i}", "m", prompt_text=PREFIX + f"q{i}", max_tokens=100)
        got = d.pick(r).primary
        holder = holder or got
        d.on_dispatched(r, got)
        d.on_finished(r, got, None, True)
    assert holder is not None
    other = next(e for e in store.all() if e is not holder)
    res = d.pick(InferenceRequest("cold", "m", prompt_text=COLD, max_tokens=max_tokens), explain=True)
    costs = res.explanation["costs"]
    return costs[holder.address], costs[other.address]


def test_only_a_decode_heavy_cold_request_pays_the_cold_spread_price() -> None:
    on = {"coldSpread": True, "coldSpreadDecodeHeavy": True}
    # Decode-heavy (1,200 output tokens for a ~170-token prompt): priced as plain coldSpread prices it.
    h, o = _cold_costs(on, 1200)
    assert h > o
    assert (h, o) == _cold_costs({"coldSpread": True}, 1200)
    # Prompt-heavy (10 output tokens): no price, costs as without coldSpread, where plain coldSpread charges.
    h, o = _cold_costs(on, 10)
    assert h == o
    assert (h, o) == _cold_costs({}, 10)
    plain_h, plain_o = _cold_costs({"coldSpread": True}, 10)
    assert plain_h > plain_o


def test_decode_heavy_without_cold_spread_is_refused_naming_it() -> None:
    # Without coldSpread the parameter would price nothing, silently: refused naming the key, as
    # freeSlotPick is without its pending bound (review s30-rev-c30 F2; it built on fc5ff08f).
    with pytest.raises(
        ConfigError, match=r"plugins\[\d+\]\.parameters\.coldSpreadDecodeHeavy: needs coldSpread"
    ):
        _director({"coldSpreadDecodeHeavy": True})
    with pytest.raises(ConfigError, match=r"\.coldSpreadDecodeHeavy: needs coldSpread"):
        _director({"coldSpread": False, "coldSpreadDecodeHeavy": True})
    _director({"coldSpread": False, "coldSpreadDecodeHeavy": False})  # off: accepted
