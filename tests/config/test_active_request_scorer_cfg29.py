"""llm-d's ``active-request-scorer`` (its P/D guide's decode profile, the affinity filter's README's pick for
decode-bound work): idle endpoints (<= ``idleThreshold`` in flight) score 1, busier ones
``(max - n) / max * maxBusyScore``, ``max`` over the scored endpoints. Fails on main a049092b: an unknown
plugin type (cfg29)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import parse_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.active_request import ActiveRequestScorer
from kvgate.scheduling.types import InferenceRequest


def _eps(*inflight: int) -> list[Endpoint]:
    eps = [
        Endpoint(address=f"10.0.0.{i}:8000", metrics=EndpointMetrics(updated_at=0.0))
        for i in range(len(inflight))
    ]
    for ep, n in zip(eps, inflight, strict=True):
        ep.inflight.requests = n
    return eps


def _scorer(eps: list[Endpoint], **params: Any) -> ActiveRequestScorer:
    h = PluginHandle(EndpointStore(eps), lambda: 0.0, 2.0, random.Random(0))
    return ActiveRequestScorer.create("a", Params(params, "plugins[0].parameters"), h)


def _cycle() -> CycleState:
    return CycleState(InferenceRequest("r", "m", prompt_text="x"), 0.0)


def test_scores_as_the_reference() -> None:
    eps = _eps(0, 2, 4, 8)
    assert _scorer(eps).score(_cycle(), eps) == [1.0, 0.75, 0.5, 0.0]
    assert _scorer(eps, idleThreshold=2, maxBusyScore=0.5).score(_cycle(), eps) == [1.0, 1.0, 0.25, 0.0]
    # the max is the scored endpoints', as llm-d-router's (review s29-rev-cfg29 F7): the busiest one filtered
    # out no longer sets the scale
    assert _scorer(eps).score(_cycle(), eps[:3]) == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"idleThreshold": -1}, "idleThreshold"),
        ({"maxBusyScore": 1.5}, "maxBusyScore"),
        ({"requestTimeout": "soon"}, "requestTimeout"),
        ({"nope": 1}, "nope"),
    ],
)
def test_errors_name_the_key(params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"plugins": [{"type": "active-request-scorer", "parameters": params}]})
    assert str(e.value).startswith(f"plugins[0].parameters.{key}:"), str(e.value)


def test_request_timeout_is_one_warning() -> None:
    p = Params({"requestTimeout": "2m"}, "plugins[0].parameters")
    ActiveRequestScorer.create("a", p, PluginHandle(None, lambda: 0.0, 2.0, random.Random(0)))
    assert len(p.warnings) == 1 and p.warnings[0].startswith(
        "plugins[0].parameters.requestTimeout: not applied"
    )


def test_in_a_profile_it_spreads_by_in_flight_requests() -> None:
    cfg = {
        "apiVersion": "llm-d.ai/v1alpha1",
        "plugins": [{"type": "active-request-scorer"}],
        "schedulingProfiles": [
            {"name": "decode", "plugins": [{"pluginRef": "active-request-scorer", "weight": 2}]}
        ],
    }
    store = EndpointStore(_eps(0, 0, 0))
    d = build_director(parse_config(cfg), store, clock=lambda: 0.0, seed=0)
    picks = []
    for i in range(6):
        r = InferenceRequest(f"r{i}", "m", prompt_text="hello")
        e = d.pick(r).primary
        d.on_dispatched(r, e)
        picks.append(e.address)
    assert sorted(picks.count(a) for a in set(picks)) == [2, 2, 2], picks
