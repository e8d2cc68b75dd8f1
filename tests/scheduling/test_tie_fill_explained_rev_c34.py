"""rev-c34-F2: the pick explanation's ``tieFill`` (87578b6b) reported 0.0 -- an empty cache -- for every
endpoint not tied at the lowest cost, whatever its fill: a reader of ``?explain`` (or of x-kvgate-pick) saw a
full replica explained as empty. Now only the tied candidates are shown, with their fills."""

from __future__ import annotations

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.scheduling.framework import EXPLAIN_EXTRAS, CycleState
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.types import InferenceRequest

from .helpers import ep, fleet


class _Fills:
    def __init__(self, fills: dict[str, float]) -> None:
        self.fills = fills

    def fill(self, address: str) -> float:
        return self.fills[address]


def test_an_untied_full_endpoint_is_not_explained_as_empty() -> None:
    d = build_director(policy_config("kvgate"), fleet(2), clock=lambda: 0.0, seed=0)
    scorer = d.handle.find(KVGateCostScorer)
    assert isinstance(scorer, KVGateCostScorer)
    scorer.prefix.index = _Fills({"a": 0.5, "b": 0.0, "c": 1.0})  # type: ignore[assignment]
    eps = [ep("a"), ep("b"), ep("c")]
    cyc = CycleState(InferenceRequest("r", "m", prompt_text="x", max_tokens=4), 0.0, explain=True)
    costs = [100.0, 100.0, 300.0]  # a and b tied; c dearer and full
    scorer._to_emptier(cyc, eps, costs, 100.0)
    shown = cyc.data[EXPLAIN_EXTRAS]["tieFill"]
    assert shown.get("c", 1.0) == 1.0, shown
    assert shown == {"a": 0.5, "b": 0.0}  # the tied candidates, with their fills
