"""``prefix-cache-affinity-filter`` with llm-d-router's parameters: ``peakPrefillThroughput`` (and the rest
of the reference's rule: ``affinityThreshold``, ``maxTTFTPenaltyMs``, ``ttftSource``,
``maxTokensInFlightPenalty``, ``explorationProbability``, the calibration record) is read and used as the
reference uses it: an endpoint's TTFT = its uncached prompt tokens in flight / peakPrefillThroughput * 1000
ms, and stickiness breaks when the best sticky endpoint is more than ``maxTTFTPenaltyMs`` behind the best
other one. llm-d's optimized-baseline config (``apiVersion: llm-d.ai/v1alpha1``, ``inflight-load-producer``)
loads as it ships. Fails on main 11cbef01: every one of these keys was an unknown-parameter error, the
apiVersion and the producer were refused (cfg29)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config, parse_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheAffinityFilter, PrefixCacheScorer
from kvgate.scheduling.types import InferenceRequest

TEXT = "shared system prompt " * 60


def _config(params: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "prefix-cache-scorer"},
            {"type": "prefix-cache-affinity-filter", "parameters": params},
            {"type": "token-load-scorer"},
            *(extra or []),
        ],
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


def _setup(params: dict[str, Any]) -> tuple[list[Endpoint], PrefixCacheAffinityFilter, CycleState]:
    """Three endpoints; the first holds the prompt's prefix (taught by one pick)."""
    import random

    store = EndpointStore(
        Endpoint(address=f"10.0.0.{i}:8000", metrics=EndpointMetrics(updated_at=0.0)) for i in range(3)
    )
    eps = list(store.all())
    h = PluginHandle(store, lambda: 0.0, 2.0, random.Random(0))
    prefix = PrefixCacheScorer("prefix", h)
    h.plugins["prefix"] = prefix
    flt = PrefixCacheAffinityFilter.create("f", Params(params, "plugins[1].parameters"), h)
    first = CycleState(InferenceRequest("r0", "m", prompt_text=TEXT), 0.0)
    prefix.prepare(first, eps)
    prefix.on_picked(first, eps[0])
    c = CycleState(InferenceRequest("r1", "m", prompt_text=TEXT), 0.0)
    prefix.prepare(c, eps)
    return eps, flt, c


def test_peak_prefill_throughput_sets_when_the_load_gate_breaks() -> None:
    # The holder has 3000 uncached prompt tokens in flight, the others none: at 1000 tokens/s it is 3000 ms
    # behind, past the 2000 ms penalty (everyone kept); at 3000 tokens/s 1000 ms, within it (holder only).
    for peak, want in ((1000, 3), (3000, 1)):
        eps, flt, c = _setup({"peakPrefillThroughput": peak, "maxTTFTPenaltyMs": 2000})
        eps[0].inflight.pending_prefill_tokens = 3000
        assert len(flt.filter(c, eps)) == want, peak
        eps[0].inflight.pending_prefill_tokens = 0
        assert flt.filter(c, eps) == [eps[0]]  # idle holder: sticky


def test_reference_defaults_and_zero_penalty() -> None:
    eps, flt, c = _setup({"affinityThreshold": 0.8})
    assert flt.gate is not None and (flt.gate.peak_prefill_throughput, flt.gate.max_ttft_penalty_ms) == (
        15928.0,
        18000.0,
    )
    eps[0].inflight.pending_prefill_tokens = 15928 * 19  # 19 s behind: past the default 18 s
    assert len(flt.filter(c, eps)) == 3
    eps, flt, c = _setup({"maxTTFTPenaltyMs": 0})  # 0: always stick
    eps[0].inflight.pending_prefill_tokens = 10**9
    assert flt.filter(c, eps) == [eps[0]]


def test_tokens_penalty_the_earlier_form() -> None:
    eps, flt, c = _setup({"maxTTFTPenaltyMs": 0, "maxTokensInFlightPenalty": 1000})
    eps[0].inflight.pending_prefill_tokens = 1001
    assert len(flt.filter(c, eps)) == 3
    eps[0].inflight.pending_prefill_tokens = 1000
    assert flt.filter(c, eps) == [eps[0]]


def test_affinity_threshold_above_the_match_keeps_everyone() -> None:
    eps, flt, c = _setup({"affinityThreshold": 1.0})
    c2 = CycleState(InferenceRequest("r2", "m", prompt_text=TEXT + "a new tail " * 200), 0.0)
    flt.prefix.prepare(c2, eps)
    assert flt.filter(c2, eps) == eps  # the holder matches under half: nobody is sticky
    assert flt.filter(c, eps) == [eps[0]]


@pytest.mark.parametrize(
    ("params", "key", "what"),
    [
        ({"peakPrefillThroughput": 0}, "peakPrefillThroughput", "must be > 0 when ttftSource"),
        ({"peakPrefillThroughput": -5}, "peakPrefillThroughput", "must be >= 0"),
        ({"peakPrefillThroughput": "fast"}, "peakPrefillThroughput", "must be a number"),
        ({"maxTTFTPenaltyMs": -1}, "maxTTFTPenaltyMs", "must be >= 0"),
        ({"affinityThreshold": 1.5}, "affinityThreshold", "must be in [0.0, 1.0]"),
        ({"explorationProbability": 2}, "explorationProbability", "must be in [0.0, 1.0]"),
        ({"ttftSource": "guess"}, "ttftSource", "must be one of ['prefillThroughput', 'latencyPredictor']"),
        ({"maxTokensInFlightPenalty": -1}, "maxTokensInFlightPenalty", "must be >= 0"),
        ({"peakPrefillThroughput": 5000, "threshold": 0.5}, "threshold", "kvgate's rule's key"),
        ({"affinityThreshold": 0.8, "maxInFlight": 4}, "maxInFlight", "kvgate's rule's key"),
        # an unknown key beside the reference's: its error lists them as the filter's keys
        ({"peakPrefillThroughput": 5000, "bogus": 1}, "bogus", "'peakPrefillThroughput'"),
    ],
)
def test_errors_name_the_key(params: dict[str, Any], key: str, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_config(params))
    msg = str(e.value)
    assert msg.startswith(f"plugins[1].parameters.{key}:") and what in msg, msg


def test_zero_peak_is_fine_where_it_is_not_read() -> None:
    parse_config(_config({"peakPrefillThroughput": 0, "maxTTFTPenaltyMs": 0}))


def test_latency_predictor_source_reads_the_latency_model() -> None:
    with pytest.raises(ConfigError) as e:
        build_director(_config({"ttftSource": "latencyPredictor"}), EndpointStore([make_endpoint("a:1")]))
    assert "plugins[1].parameters.ttftSource: " in str(e.value), str(e.value)
    cfg = _config({"ttftSource": "latencyPredictor"}, [{"type": "predicted-latency-scorer", "name": "lat"}])
    d = build_director(cfg, EndpointStore([make_endpoint("a:1"), make_endpoint("b:1")]), clock=lambda: 0.0)
    (flt,) = (p for p in d.handle.plugins.values() if isinstance(p, PrefixCacheAffinityFilter))
    assert flt.oracle is d.handle.plugins["lat"]
    d.pick(InferenceRequest("r", "m", prompt_text=TEXT))


def _record(path: Path, **over: Any) -> str:
    rec = {
        "schema_version": 1,
        "status": "OK",
        "fingerprint": "sha256:abc",
        "chunk_tokens": 8192,
        "valid_samples": 12,
        "median_ttft_seconds": 1.7,
        "peak_prefill_tokens_per_second": 4783.0,
        **over,
    }
    path.write_text(json.dumps(rec))
    return str(path)


def test_calibration_record(tmp_path: Path) -> None:
    good = _record(tmp_path / "cal.json")
    cal = {"prefillCalibrationFile": good, "prefillCalibrationFingerprint": "sha256:abc"}
    _, flt, _ = _setup(cal)
    assert flt.gate is not None and flt.gate.peak_prefill_throughput == 4783.0
    _, flt, _ = _setup({**cal, "peakPrefillThroughput": 15928})  # written: the operator's value wins
    assert flt.gate is not None and flt.gate.peak_prefill_throughput == 15928.0
    other = {**cal, "prefillCalibrationFingerprint": "sha256:other"}
    cfg = parse_config(_config(other), announce=False)  # not applied: the default stays, one warning
    assert any("plugins[1].parameters.prefillCalibrationFile" in w for w in cfg.warnings + _warnings(other))
    with pytest.raises(ConfigError) as e:
        parse_config(_config({**other, "prefillCalibrationRequired": True}))
    assert str(e.value).startswith("plugins[1].parameters.prefillCalibrationFile:"), str(e.value)
    few = _record(tmp_path / "few.json", valid_samples=3)
    with pytest.raises(ConfigError, match="valid_samples"):
        parse_config(_config({**cal, "prefillCalibrationFile": few, "prefillCalibrationRequired": True}))


def _warnings(params: dict[str, Any]) -> list[str]:
    p = Params(params, "plugins[1].parameters")
    import random

    PrefixCacheAffinityFilter.create("f", p, PluginHandle(None, lambda: 0.0, 2.0, random.Random(0)))
    return p.warnings


OPTIMIZED_BASELINE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-load-scorer
- type: inflight-load-producer
- type: approx-prefix-cache-producer
  parameters:
      maxPrefixTokensToMatch: 40960
- type: prefix-cache-affinity-filter
  parameters:
    affinityThreshold: 0.80
    maxTokensInFlightPenalty: 2000
    maxTTFTPenaltyMs: 0
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: token-load-scorer
"""


def test_optimized_baseline_as_it_ships_sticks_then_spills() -> None:
    # llm-d's optimized-baseline values (its penalty lowered from 286720 so a few requests reach it).
    store = EndpointStore([make_endpoint(f"10.0.0.{i}:8000") for i in range(3)])
    d = build_director(load_config(OPTIMIZED_BASELINE), store, clock=lambda: 0.0, seed=0)
    picks, loads = [], []
    for i in range(10):
        # 19 shared blocks + 3 of its own: a match of 19/22 (sticky at 0.80), 3/22 of 2200 tokens uncached
        r = InferenceRequest(
            f"r{i}", "m", prompt_text=TEXT + f"request {i:04d} ".ljust(192, "."), prompt_tokens=2200
        )
        e = d.pick(r).primary
        d.on_dispatched(r, e)
        if i == 0:
            d.on_first_token(r, e)  # the cold first request's whole prompt leaves with its first token
        picks.append(e.address)
        loads.append(e.inflight.pending_prefill_tokens)
    holder = picks[0]
    # Sticky while the holder's uncached prompt tokens in flight are within 2000 of an idle endpoint's
    # (300 per request: 2100 after the 8th), then spread to an idle one.
    assert picks[:8] == [holder] * 8 and loads[7] == 2100, (picks, loads)
    assert picks[8] != holder, (picks, loads)
    with pytest.raises(ConfigError) as e:
        load_config(
            OPTIMIZED_BASELINE.replace(
                "- type: inflight-load-producer\n",
                "- type: inflight-load-producer\n  parameters: {nope: 1}\n",
            )
        )
    assert str(e.value).startswith("plugins[1].parameters.nope:"), str(e.value)
