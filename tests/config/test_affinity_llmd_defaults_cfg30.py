"""A ``prefix-cache-affinity-filter`` with no rule keys under llm-d's apiVersion (``- type:
prefix-cache-affinity-filter`` alone, as llm-d's guide values write it) runs llm-d-router's rule at its
defaults (threshold 0.80, ``maxTTFTPenaltyMs`` 18000 at ``peakPrefillThroughput`` 15928), as llm-d-router
does; under GIE's apiVersion it keeps kvgate's rule. Fails on 6d96a979: the llm-d config ran kvgate's rule
(``gate`` None) without a word (cfg30)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import API_VERSION, LLMD_API_VERSIONS, parse_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.plugins.affinity_gate import DEFAULT_PEAK_PREFILL, DEFAULT_PENALTY_MS
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheAffinityFilter


def _doc(api: str, params: dict[str, Any] | None) -> dict[str, Any]:
    flt: dict[str, Any] = {"type": "prefix-cache-affinity-filter"}
    if params is not None:
        flt["parameters"] = params
    return {
        "apiVersion": api,
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": "approx-prefix-cache-producer"}, flt, {"type": "token-load-scorer"}],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "prefix-cache-affinity-filter"},
                    {"pluginRef": "token-load-scorer"},
                ],
            }
        ],
    }


def _filter(doc: dict[str, Any]) -> PrefixCacheAffinityFilter:
    director = build_director(
        parse_config(doc), EndpointStore([make_endpoint("10.0.0.1:8000")]), clock=lambda: 0.0, seed=0
    )
    flt = director.handle.plugins["prefix-cache-affinity-filter"]
    assert isinstance(flt, PrefixCacheAffinityFilter)
    return flt


@pytest.mark.parametrize("api", LLMD_API_VERSIONS)
@pytest.mark.parametrize(
    "params", [None, {}, {"prefixMatchInfoProducerName": "approx-prefix-cache-producer"}]
)
def test_llmd_parameterless_filter_runs_the_reference_rule_at_its_defaults(
    api: str, params: dict[str, Any] | None
) -> None:
    gate = _filter(_doc(api, params)).gate
    assert gate is not None
    assert (gate.threshold, gate.max_ttft_penalty_ms, gate.peak_prefill_throughput) == (
        0.80,
        DEFAULT_PENALTY_MS,
        DEFAULT_PEAK_PREFILL,
    )


def test_gie_parameterless_filter_keeps_kvgates_rule() -> None:
    flt = _filter(_doc(API_VERSION, None))
    assert flt.gate is None and (flt.threshold, flt.slack) == (0.5, 0.1)


def test_llmd_filter_with_kvgates_keys_keeps_kvgates_rule() -> None:
    flt = _filter(_doc(LLMD_API_VERSIONS[0], {"threshold": 0.6}))
    assert flt.gate is None and flt.threshold == 0.6
