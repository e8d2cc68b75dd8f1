"""``kvgate.stickylabels``: the one bounded-label rule flow control's ``fairness_id`` label
(``flowcontrol.metrics.FlowLabels``) and llm-d's per-request families' (``openai.labels.FairnessLabels``)
share (closing-s19 D1: the two were copies). Both give the same labels for the same ids, in the same order;
the rule alone is bounded and sticky."""

from __future__ import annotations

import random

from kvgate.flowcontrol.metrics import DEFAULT_FLOW, FlowLabels
from kvgate.openai.labels import FairnessLabels
from kvgate.openai.protocol import DEFAULT_FAIRNESS_ID
from kvgate.stickylabels import OTHER, StickyLabels


def test_both_label_sets_are_the_shared_rule() -> None:
    assert issubclass(FlowLabels, StickyLabels) and issubclass(FairnessLabels, StickyLabels)
    assert DEFAULT_FLOW == DEFAULT_FAIRNESS_ID


def test_flow_control_and_request_families_label_alike() -> None:
    """A skewed stream of 300 ids (heavy ones, a spray, ``other`` itself): the two give the same label to
    every id after every request, and each promotes at most 16 ids besides the default flow."""
    rng = random.Random(20)
    flow, fairness = FlowLabels(), FairnessLabels()
    ids = [f"t{int(rng.paretovariate(0.7)) % 300}" for _ in range(20_000)] + ["other"] * 50
    rng.shuffle(ids)
    for n, ident in enumerate(ids):
        flow.count(ident)
        fairness.count(ident)
        if n % 97 == 0:
            assert flow.labelled == fairness.labelled
        assert flow.label(ident) == fairness.label(ident)
    assert flow.labelled == fairness.labelled
    assert 1 < len(flow.labelled) <= 17 and OTHER not in flow.labelled and DEFAULT_FLOW in flow.labelled


def test_the_promotion_hook_runs_once_per_id() -> None:
    seen: list[str] = []

    class Hooked(StickyLabels):
        __slots__ = ()

        def promoted(self, ident: str) -> None:
            seen.append(ident)

    labels = Hooked(size=2, promote_at=3)
    for ident in ["a", "a", "b", "a", "a", "c", "c", "c", "b", "b", "d", "d", "d"]:
        labels.count(ident)
    assert seen == ["a", "c"] and labels.labelled == {DEFAULT_FLOW, "a", "c"}
    assert labels.label("b") == OTHER and not labels.counts  # all given: nothing more counted
