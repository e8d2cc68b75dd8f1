"""llm-d-router's sample EndpointPickerConfigs (its ``deploy/config/*.yaml``, its guides): ``decode-filter``
and ``prefill-filter`` (the ``llm-d.ai/role`` pod label), ``no-hit-lru-scorer`` (cold requests spread over the
endpoints that took one least recently) and ``apiVersion: llm-d.ai/v1`` load and work as there. Fails on
main f3b7b2c2: each was an unknown plugin type or a refused apiVersion (cfg29)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config, parse_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.filters import DecodeFilter, PrefillFilter
from kvgate.scheduling.plugins.no_hit_lru import NoHitLRUScorer
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.types import InferenceRequest

# llm-d-router deploy/config/epp-config.yaml, its models-responder left out (not a kvgate plugin)
EPP_CONFIG = """\
apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: decode-filter
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
"""

# llm-d's legacy inference-scheduling blend: prefix 3 + queue 2 + KV 2 + no-hit-LRU 2
BLEND = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: no-hit-lru-scorer
  parameters:
    lruSize: 2048
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: no-hit-lru-scorer, weight: 2}
"""


def _ep(addr: str, role: str | None = None) -> Endpoint:
    labels = {} if role is None else {"llm-d.ai/role": role}
    return Endpoint(address=addr, metrics=EndpointMetrics(updated_at=0.0), labels=labels)


def test_role_filters() -> None:
    eps = [_ep("a:1", "prefill"), _ep("b:1", "decode"), _ep("c:1", "both"), _ep("d:1"), _ep("e:1", "other")]
    h = PluginHandle(None, lambda: 0.0, 2.0, random.Random(0))
    c = CycleState(InferenceRequest("r", "m", prompt_text="x"), 0.0)
    assert [e.address for e in DecodeFilter("d", h).filter(c, eps)] == ["b:1", "c:1", "d:1"]
    assert [e.address for e in PrefillFilter("p", h).filter(c, eps)] == ["a:1", "c:1"]  # both: prefill-decode


def test_the_samples_load_and_decode_filter_routes() -> None:
    store = EndpointStore([_ep("10.0.0.1:8000", "prefill"), _ep("10.0.0.2:8000", "decode")])
    d = build_director(load_config(EPP_CONFIG), store, clock=lambda: 0.0, seed=0)
    for i in range(5):
        assert (
            d.pick(InferenceRequest(f"r{i}", "m", prompt_text="hello " * 50)).primary.address
            == "10.0.0.2:8000"
        )
    build_director(load_config(BLEND), store, clock=lambda: 0.0, seed=0)


@pytest.mark.parametrize(
    ("plugin", "key"),
    [
        ({"type": "decode-filter", "parameters": {"role": "x"}}, "plugins[0].parameters.role"),
        ({"type": "no-hit-lru-scorer", "parameters": {"lruSize": 0}}, "plugins[0].parameters.lruSize"),
        ({"type": "no-hit-lru-scorer", "parameters": {"lruSIze": 5}}, "plugins[0].parameters.lruSIze"),
    ],
)
def test_errors_name_the_key(plugin: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"plugins": [plugin]})
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_an_unknown_api_version_is_still_refused() -> None:
    with pytest.raises(ConfigError, match=r"^apiVersion: expected .*'llm-d\.ai/v1'.*got 'llm-d\.ai/v2'"):
        load_config(EPP_CONFIG.replace("llm-d.ai/v1", "llm-d.ai/v2"))


def _scorer(lru_size: int = 1024) -> tuple[list[Endpoint], PrefixCacheScorer, NoHitLRUScorer]:
    eps = [_ep(f"10.0.0.{i}:8000") for i in range(3)]
    h = PluginHandle(EndpointStore(eps), lambda: 0.0, 2.0, random.Random(0))
    prefix = PrefixCacheScorer("prefix", h)
    h.plugins["prefix"] = prefix
    return eps, prefix, NoHitLRUScorer.create("lru", Params({"lruSize": lru_size}, "p"), h)


def _cycle(prefix: PrefixCacheScorer, eps: list[Endpoint], text: str) -> CycleState:
    c = CycleState(InferenceRequest(text[:8], "m", prompt_text=text), 0.0)
    prefix.prepare(c, eps)
    return c


def test_no_hit_lru_scores_cold_requests_by_lru() -> None:
    eps, prefix, s = _scorer()
    c = _cycle(prefix, eps, "cold one " * 40)
    assert s.score(c, eps) == [1.0, 0.5, 0.0]  # none took a cold request: candidate order
    s.on_picked(c, eps[0])
    prefix.on_picked(c, eps[0])
    c = _cycle(prefix, eps, "cold two " * 40)
    assert s.score(c, eps) == [0.0, 1.0, 0.5]  # never-used first, then the least recently used
    s.on_picked(c, eps[1])
    c = _cycle(prefix, eps, "cold three " * 40)
    assert s.score(c, eps) == [0.5, 0.0, 1.0]
    warm = _cycle(prefix, eps, "cold one " * 40 + "more")
    assert s.score(warm, eps) == [0.5, 0.5, 0.5]  # a prefix hit somewhere: neutral
    s.on_picked(warm, eps[2])  # a warm request's pick does not count
    assert list(s.lru) == ["10.0.0.0:8000", "10.0.0.1:8000"]


def test_no_hit_lru_is_bounded() -> None:
    eps, prefix, s = _scorer(lru_size=2)
    for i, ep in enumerate(eps):
        c = _cycle(prefix, eps, f"cold {i} " * 40)
        s.score(c, eps)
        s.on_picked(c, ep)
    assert list(s.lru) == ["10.0.0.1:8000", "10.0.0.2:8000"]


def test_no_hit_lru_spreads_cold_requests_in_the_blend() -> None:
    store = EndpointStore([_ep(f"10.0.0.{i}:8000") for i in range(3)])
    d = build_director(load_config(BLEND), store, clock=lambda: 0.0, seed=0)
    picks = [
        d.pick(InferenceRequest(f"r{i}", "m", prompt_text=f"unique {i} " * 60)).primary.address
        for i in range(3)
    ]
    assert len(set(picks)) == 3, picks
