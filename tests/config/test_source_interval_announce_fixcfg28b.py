"""The ``metrics-data-source`` ``interval`` WARNING (review s28-rev-cfg28 F9) is said as the config's other
warnings are: once per load, by the load that announces (``validate``), not by a ``--workers`` worker's
quiet build (review s28-rev-fixes28a F4); and only for a detector that reads the scraped metrics, not the
concurrency-detector, which counts in-flight requests (F7). Both tests fail on d5c74e9d."""

from __future__ import annotations

import logging

import pytest

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool

DOC = {
    "listen": {"host": "127.0.0.1", "port": 0},
    "pools": [{
        "name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"],
        "endpointPickerConfig": {
            "plugins": [
                {"type": "metrics-data-source", "parameters": {"interval": "1s"}},
                {"type": "queue-scorer"},
            ],
        },
    }],
}  # fmt: skip


def test_a_quiet_build_says_nothing_of_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_gateway_config(DOC)
    caplog.set_level(logging.WARNING)
    build_pool(cfg.pools[0], announce=True)
    loud = [r.getMessage() for r in caplog.records if ".interval" in r.getMessage()]
    assert len(loud) == 1, loud  # (the control: the load that announces says it once)
    caplog.clear()
    build_pool(cfg.pools[0], announce=False)  # (a --workers worker: its supervisor said it)
    quiet = [r.getMessage() for r in caplog.records if ".interval" in r.getMessage()]
    assert quiet == [], quiet


def test_a_detector_that_reads_no_scraped_metrics_is_not_said_to_go_saturated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The concurrency-detector reads no scraped metrics: a 1 s interval cannot make it count endpoints
    saturated, and the WARNING said it does."""
    from kvgate.config.director import build_director
    from kvgate.config.picker import load_config
    from kvgate.datalayer.store import EndpointStore

    doc = (
        "plugins:\n- type: metrics-data-source\n  parameters: {interval: 1s}\n- type: queue-scorer\n"
        "saturationDetector:\n  type: concurrency-detector\n"
    )
    caplog.set_level(logging.WARNING)
    build_director(load_config(doc), EndpointStore(), clock=lambda: 0.0, seed=0)
    said = [r.getMessage() for r in caplog.records if ".interval" in r.getMessage()]
    assert said == [], said
    caplog.clear()  # (the control: the default utilization-detector is harmed, and told)
    build_director(
        load_config(doc.split("saturationDetector")[0]), EndpointStore(), clock=lambda: 0.0, seed=0
    )
    said = [r.getMessage() for r in caplog.records if "counts the endpoints saturated" in r.getMessage()]
    assert len(said) == 1, said
