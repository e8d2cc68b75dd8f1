"""llm-d's ``load-aware-scorer`` (its burst-prefix-cache sample's load scorer): an empty waiting queue 0.5,
``w`` waiting ``0.5 * (1 - min(w, threshold) / threshold)``, a stale endpoint 0. Fails on main be00955b: an
unknown plugin type (cfg29)."""

from __future__ import annotations

import random

import pytest

from kvgate.config.picker import parse_config
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.load_aware import LoadAwareScorer
from kvgate.scheduling.types import InferenceRequest


def test_scores_as_the_reference() -> None:
    eps = [
        Endpoint(address=f"10.0.0.{i}:8000", metrics=EndpointMetrics(updated_at=0.0, waiting_queue_size=w))
        for i, w in enumerate((0, 2, 4, 9))
    ]
    h = PluginHandle(EndpointStore(eps), lambda: 0.0, 2.0, random.Random(0))
    s = LoadAwareScorer.create("l", Params({"threshold": 4}, "plugins[0].parameters"), h)
    c = CycleState(InferenceRequest("r", "m", prompt_text="x"), 0.0)
    assert s.score(c, eps) == [0.5, 0.25, 0.0, 0.0]
    eps[0].metrics.updated_at = -100.0  # stale: no evidence it is idle (a new cycle: freshness is per cycle)
    assert s.score(CycleState(InferenceRequest("r2", "m", prompt_text="x"), 0.0), eps)[0] == 0.0
    assert LoadAwareScorer.create("d", Params({}, "p"), h).threshold == 128


@pytest.mark.parametrize(
    ("params", "key"), [({"threshold": 0}, "threshold"), ({"queueThreshold": 5}, "queueThreshold")]
)
def test_errors_name_the_key(params: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"plugins": [{"type": "load-aware-scorer", "parameters": params}]})
    assert str(e.value).startswith(f"plugins[0].parameters.{key}:"), str(e.value)
