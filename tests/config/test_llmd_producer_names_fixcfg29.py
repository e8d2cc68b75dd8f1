"""Review s29-rev-cfg29 F7, F5, F4 (fixcfg29). llm-d-router's ``active-request-scorer``
(scorer/activerequest/active_request.go, commit 2b0e7579) takes its ``maxCount`` over the endpoints it scores
and reads ``inFlightLoadProducerName``; kvgate's took the max over the whole pool and refused the key. The
affinity filter's ``inFlightLoadProducerName`` was taken with any value (a typo silently accepted), and the
``inflight-load-producer``'s ``prefixMatchInfoProducerName`` was an unknown parameter. Each name is now
checked as the prefix consumers' are. Fail on 2bc342a7."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import parse_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError, CycleState
from kvgate.scheduling.types import InferenceRequest

from .test_active_request_scorer_cfg29 import _eps, _scorer


def test_active_request_max_is_over_the_scored_endpoints() -> None:
    eps = _eps(0, 2, 4, 8)
    c = CycleState(InferenceRequest("r", "m", prompt_text="x"), 0.0)
    # the busiest endpoint filtered out: the reference's max is 4 among the three candidates
    assert _scorer(eps).score(c, eps[:3]) == [1.0, 0.5, 0.0]


def _plugins(consumer: dict[str, Any]) -> dict[str, Any]:
    declared = [{"type": "approx-prefix-cache-producer"}, {"type": "queue-scorer"}]
    return {"plugins": [*declared, {"type": "inflight-load-producer"}, consumer]}


@pytest.mark.parametrize(
    "consumer",
    [
        {"type": "active-request-scorer",
         "parameters": {"inFlightLoadProducerName": "inflight-load-producer"}},
        {"type": "prefix-cache-affinity-filter",
         "parameters": {"inFlightLoadProducerName": "inflight-load-producer"}},
    ],
)  # fmt: skip
def test_in_flight_load_producer_name_is_taken(consumer: dict[str, Any]) -> None:
    parse_config(_plugins(consumer))


@pytest.mark.parametrize("plugin_type", ["active-request-scorer", "prefix-cache-affinity-filter"])
@pytest.mark.parametrize(
    ("ref", "why"), [("inflight-lod-producer", "no plugin named"), ("queue-scorer", "is a")]
)
def test_in_flight_load_producer_name_must_name_one(plugin_type: str, ref: str, why: str) -> None:
    consumer = {"type": plugin_type, "parameters": {"inFlightLoadProducerName": ref}}
    with pytest.raises(ConfigError) as e:
        parse_config(_plugins(consumer))
    assert str(e.value).startswith("plugins[3].parameters.inFlightLoadProducerName:"), str(e.value)
    assert why in str(e.value)


def test_inflight_producer_takes_its_prefix_producer_name() -> None:
    cfg: dict[str, Any] = {
        "apiVersion": "llm-d.ai/v1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "approx-prefix-cache-producer"},
            {"type": "inflight-load-producer",
             "parameters": {"prefixMatchInfoProducerName": "approx-prefix-cache-producer"}},
            {"type": "prefix-cache-affinity-filter", "parameters": {"maxTTFTPenaltyMs": 18000}},
            {"type": "token-load-scorer"},
        ],
        "schedulingProfiles": [
            {"name": "default",
             "plugins": [{"pluginRef": "prefix-cache-affinity-filter"}, {"pluginRef": "token-load-scorer"}]}
        ],
    }  # fmt: skip
    build_director(
        parse_config(cfg), EndpointStore([make_endpoint("10.0.0.1:8000")]), clock=lambda: 0.0, seed=0
    )
    cfg["plugins"][1]["parameters"] = {"prefixMatchInfoProducerName": "approx-prefix-cache-prodcuer"}
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert str(e.value).startswith("plugins[1].parameters.prefixMatchInfoProducerName:"), str(e.value)
