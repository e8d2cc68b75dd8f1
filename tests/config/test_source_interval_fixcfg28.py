"""A ``metrics-data-source`` ``interval`` longer than the pool's saturation detector can bridge (the
default utilization-detector: 200 ms) makes every endpoint saturated between scrapes (its metrics count as
stale), so sheddable requests are refused and flow control holds requests: the load says so, one WARNING
naming the key (review s28-rev-cfg28 F9, fixcfg28; fails on main ca67a4cb: not a word). The reference's
50 ms is silent."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from kvgate.config.director import build_director
from kvgate.config.picker import load_config
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
DOC = HEAD + "- type: metrics-data-source\n  parameters: {interval: 1s}\n- type: queue-scorer\n"


def test_an_interval_the_detector_cannot_bridge_is_said_at_load(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    store = EndpointStore([make_endpoint("10.0.0.1:8000")])
    try:
        director = build_director(load_config(DOC), store, clock=lambda: 0.0, seed=0)
    except ConfigError as e:
        assert "plugins[0].parameters.interval" in str(e)
        return
    # (the harm: half a scrape period after a scrape, the endpoint is saturated to the detector)
    ep = store.all()[0]
    ep.metrics = dataclasses.replace(ep.metrics, updated_at=0.0)
    assert director.detector is not None and director.detector.endpoint_saturation(ep, 0.5) == 1.0
    assert any("plugins[0].parameters.interval" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_the_references_interval_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    store = EndpointStore([make_endpoint("10.0.0.1:8000")])
    build_director(load_config(DOC.replace("1s", "50ms")), store, clock=lambda: 0.0, seed=0)
    assert not [r.getMessage() for r in caplog.records if "interval" in r.getMessage()]
