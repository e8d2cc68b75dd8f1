"""Review s11-late M1: a coldSpreadWindow of 0 passed validation and then every pick raised
ZeroDivisionError (the window divides the decayed reuse count); it is now a config error naming the key."""

from __future__ import annotations

import pytest

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import ConfigError, Params, PluginHandle
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.types import InferenceRequest


@pytest.mark.parametrize("window", [0, "0s", "0ms"])
def test_a_zero_cold_spread_window_is_a_config_error_naming_the_key(window: object) -> None:
    with pytest.raises(ConfigError, match="coldSpreadWindow"):
        KVGateCostScorer.create(
            "k", Params({"coldSpread": True, "coldSpreadWindow": window}, "p"), PluginHandle()
        )


def _build(window: str) -> Director:
    """The kvgate policy with coldSpread on and the given window, over two endpoints."""
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            spec.parameters = {**(spec.parameters or {}), "coldSpread": True, "coldSpreadWindow": window}
    store = EndpointStore(
        Endpoint(address=f"10.0.0.{i}:8000", metrics=EndpointMetrics(updated_at=0.0)) for i in range(2)
    )
    return build_director(cfg, store, clock=lambda: 0.0, seed=0)


def test_the_loader_refuses_a_zero_window_before_any_pick() -> None:
    with pytest.raises(ConfigError, match="coldSpreadWindow"):
        _build("0s")


def test_a_positive_window_still_picks() -> None:
    d = _build("1ms")
    prefix = "a system prompt shared by every turn " * 40
    for i in range(3):
        r = InferenceRequest(f"r{i}", "m", prompt_text=prefix + f"q{i}")
        got = d.pick(r).primary
        d.on_dispatched(r, got)
        d.on_finished(r, got, None, True)
