"""qa36b-F2: ``{inference_extension_,llm_d_epp_}plugin_duration_seconds{extension_point, plugin_type,
plugin_name}`` (GIE / llm-d-router ``pkg/epp/metrics``): each filter, scorer and picker of a profile is timed
at every pick, plain and explained, a filter that leaves no endpoint too (upstream times it before it
checks). Before: not exported."""

from __future__ import annotations

import pytest

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Filter, PluginHandle
from kvgate.scheduling.metrics import PLUGIN_DURATION
from kvgate.scheduling.plugins.pickers import MaxScorePicker
from kvgate.scheduling.plugins.scorers import QueueScorer
from kvgate.scheduling.profile import SchedulerProfile
from kvgate.scheduling.types import InferenceRequest, NoCapacityError


class Keep(Filter):
    type_name = "qa36b-keep-filter"

    def __init__(self, name: str, keep: bool) -> None:
        super().__init__(name, PluginHandle())
        self.keep = keep

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        return endpoints if self.keep else []


def _count(point: str, plugin_type: str, name: str) -> int:
    h = PLUGIN_DURATION.hists.get((point, plugin_type, name))
    return sum(h.counts) if h is not None else 0


def test_each_plugin_is_timed_per_pick_plain_and_explained() -> None:
    profile = SchedulerProfile("qa36b")
    profile.add(Keep("qa36b-f", True), None)
    profile.add(QueueScorer("qa36b-s", PluginHandle()), 2.0)
    profile.add(MaxScorePicker("qa36b-p", PluginHandle(), 1), None)
    eps = [Endpoint("a:1"), Endpoint("b:2")]
    keys = [("Filter", "qa36b-keep-filter", "qa36b-f"), ("Scorer", QueueScorer.type_name, "qa36b-s"),
            ("Picker", MaxScorePicker.type_name, "qa36b-p")]  # fmt: skip
    before = [_count(*k) for k in keys]
    for explain in (False, True, False):
        assert profile.run(CycleState(InferenceRequest(request_id="r", model="m"), 0.0, explain), eps)
    assert [_count(*k) - b for k, b in zip(keys, before, strict=True)] == [3, 3, 3]
    h = PLUGIN_DURATION.hists[keys[1]]
    assert h.sum > 0 and len(h.counts) == 11  # 10 bounds (100 us .. 100 ms) and +Inf
    text = "".join(f"{s.name}{s.labels}" for fam in PLUGIN_DURATION.collect() for s in fam.samples)
    for name in ("inference_extension_plugin_duration_seconds", "llm_d_epp_plugin_duration_seconds"):
        assert f"{name}_count{{'extension_point': 'Scorer', 'plugin_type': '{QueueScorer.type_name}'" in text


@pytest.mark.parametrize("explain", [False, True])
def test_a_filter_that_empties_the_pool_is_timed(explain: bool) -> None:
    profile = SchedulerProfile("qa36b-empty")
    profile.add(Keep("qa36b-none", False), None)
    profile.add(MaxScorePicker("qa36b-p2", PluginHandle(), 1), None)
    key = ("Filter", "qa36b-keep-filter", "qa36b-none")
    before = _count(*key)
    with pytest.raises(NoCapacityError):
        profile.run(CycleState(InferenceRequest(request_id="r", model="m"), 0.0, explain), [Endpoint("a:1")])
    assert _count(*key) - before == 1
