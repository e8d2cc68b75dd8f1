"""predicted-latency-scorer and slo-headroom-tier-filter: through the Director with an injected clock,
on their own with hand-set predictions, and their configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config import ConfigError
from kvgate.config.director import build_director
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.framework import CycleState
from kvgate.scheduling.latency import DIM
from kvgate.scheduling.plugins.predicted_latency import (
    PredictedLatencyScorer,
    SLOHeadroomTierFilter,
    slo_targets,
)
from kvgate.scheduling.types import InferenceRequest, ShedError, Usage

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "predicted-latency.yaml"
FAST, SLOW = "10.0.0.1:8000", "10.0.0.2:8000"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _director(clock: Clock) -> Director:
    store = EndpointStore.from_addresses([FAST, SLOW])
    return build_director(EXAMPLE, store, clock, seed=0)


def _serve_one(d: Director, clock: Clock, i: int, headers: dict[str, str] | None = None) -> str:
    """One request, start to finish: TTFT 50 ms on the fast replica, 400 ms on the slow one."""
    req = InferenceRequest(f"r{i}", "m", prompt_text=f"request {i} " * 50, headers=headers or {})
    ep = d.pick(req).primary
    d.on_dispatched(req, ep)
    fast = ep.address == FAST
    clock.t += 0.05 if fast else 0.4
    d.on_first_token(req, ep)
    clock.t += 20 * (0.01 if fast else 0.03)
    d.on_finished(req, ep, Usage(prompt_tokens=100, completion_tokens=21), True)
    clock.t += 0.01
    return str(ep.address)


def _scorer(d: Director) -> PredictedLatencyScorer:
    s = d.handle.find(PredictedLatencyScorer)
    assert isinstance(s, PredictedLatencyScorer)
    return s


def test_example_config_loads_and_learns_to_prefer_the_faster_replica() -> None:
    clock = Clock()
    d = _director(clock)
    prof = d.profiles["default"]
    assert [f.type_name for f in prof.filters] == ["slo-headroom-tier-filter"]
    assert "predicted-latency-scorer" in [s.type_name for s, _ in prof.scorers]
    picks = [_serve_one(d, clock, i) for i in range(60)]
    assert {FAST, SLOW} <= set(picks[:10])  # both get tried while unknown
    assert picks[-30:].count(FAST) >= 27
    s = _scorer(d)
    x = [1.0, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0]
    fast, slow = s.predictor.predict(FAST, x), s.predictor.predict(SLOW, x)
    assert fast.ttft < slow.ttft and fast.tpot < slow.tpot
    assert s.predictor.pending() == 0  # every pick was closed by its finish


def test_slo_headroom_filter_and_scores() -> None:
    clock = Clock()
    d = _director(clock)
    for i in range(40):
        _serve_one(d, clock, i)
    s = _scorer(d)
    flt = d.handle.find(SLOHeadroomTierFilter)
    assert isinstance(flt, SLOHeadroomTierFilter)
    eps = list(d.store.all())
    text = "request x " * 50

    def cycle(headers: dict[str, str]) -> CycleState:
        return CycleState(InferenceRequest("q", "m", prompt_text=text, headers=headers), clock.t, True)

    # A 200 ms TTFT SLO: only the fast replica (~50 ms) is predicted to meet it.
    c = cycle({"x-slo-ttft-ms": "200"})
    assert [e.address for e in flt.filter(c, eps)] == [FAST]
    scores = dict(zip([e.address for e in eps], s.score(c, eps), strict=True))
    assert scores[FAST] == 1.0 and scores[SLOW] == 0.0
    assert c.data["explain-extras"]["predicted_latency"][FAST]["headroom"] > 0.0
    # Time already waited (e.g. in the flow-control queue) counts against the TTFT SLO.
    waited = CycleState(
        InferenceRequest(
            "q", "m", prompt_text=text, headers={"x-slo-ttft-ms": "200"}, arrival_time=clock.t - 0.1
        ),
        clock.t,
    )
    assert [e.address for e in flt.filter(waited, eps)] == [FAST]
    waited = CycleState(
        InferenceRequest(
            "q", "m", prompt_text=text, headers={"x-slo-ttft-ms": "200"}, arrival_time=clock.t - 0.19
        ),
        clock.t,
    )
    assert len(flt.filter(waited, eps)) == 2  # even the fast one would now miss: keep everyone
    # Nobody meets 1 ms: keep everyone (the scorer still ranks by headroom).
    assert len(flt.filter(cycle({"x-slo-ttft-ms": "1"}), eps)) == 2
    # Both meet 5 s TTFT, but only the fast one meets a 20 ms TPOT (slow decodes at ~30 ms).
    c = cycle({"x-llm-d-slo-ttft-ms": "5000", "x-llm-d-slo-tpot-ms": "20"})
    assert [e.address for e in flt.filter(c, eps)] == [FAST]
    # No SLO: everything passes; the scorer prefers the lower predicted TTFT.
    c = cycle({})
    assert len(flt.filter(c, eps)) == 2
    scores = dict(zip([e.address for e in eps], s.score(c, eps), strict=True))
    assert scores[FAST] == 1.0 and scores[SLOW] < 0.5


def test_slo_headers_parse_and_malformed_ones_are_ignored() -> None:
    def req(h: dict[str, str]) -> InferenceRequest:
        return InferenceRequest("r", "m", headers=h)

    assert slo_targets(req({"x-slo-ttft-ms": "250", "x-slo-tpot-ms": "20"})) == (0.25, 0.02)
    assert slo_targets(req({"x-llm-d-slo-ttft-ms": "1000"})) == (1.0, None)
    assert slo_targets(req({"x-slo-ttft-ms": "soon", "x-slo-tpot-ms": "-3"})) == (None, None)
    assert slo_targets(req({"x-slo-ttft-ms": "nan"})) == (None, None)


def test_untrained_predictions_are_optimistic_and_confidence_makes_them_cautious() -> None:
    clock = Clock()
    d = _director(clock)
    s = _scorer(d)
    eps = list(d.store.all())
    c = CycleState(InferenceRequest("q", "m", prompt_text="hi " * 400), clock.t)
    assert s.score(c, eps) == [1.0, 1.0]  # nothing known: all equal, all worth a try
    preds = s.predictions(c, eps)
    assert all(len(x) == DIM and p.samples == 0 and p.ttft_std > 0 for x, p in preds.values())


@pytest.mark.parametrize(
    ("plugins", "key"),
    [
        (
            "- {type: predicted-latency-scorer, parameters: {confidence: -1}}",
            "plugins[0].parameters.confidence",
        ),
        (
            "- {type: predicted-latency-scorer, parameters: {forgetting: 1.5}}",
            "plugins[0].parameters.forgetting",
        ),
        (
            "- {type: predicted-latency-scorer, parameters: {maxEndpoints: 0}}",
            "plugins[0].parameters.maxEndpoints",
        ),
        ("- {type: predicted-latency-scorer, parameters: {window: 3}}", "plugins[0].parameters.window"),
        (
            "- {type: slo-headroom-tier-filter, parameters: {predictorRef: 7}}",
            "plugins[0].parameters.predictorRef",
        ),
        ("- {type: slo-headroom-tier-filter}", "plugins[0].parameters.predictorRef"),
        (
            "- {type: queue-scorer}\n"
            "- {type: slo-headroom-tier-filter, parameters: {predictorRef: queue-scorer}}",
            "plugins[1].parameters.predictorRef",
        ),
    ],
)
def test_config_errors_name_the_key(plugins: str, key: str) -> None:
    text = f"plugins:\n{plugins}\n"
    with pytest.raises(ConfigError) as err:
        build_director(text, EndpointStore.from_addresses([FAST]))
    assert key in str(err.value)


def test_sheddable_request_predicted_to_miss_everywhere_is_shed() -> None:
    clock = Clock()
    d = _director(clock)
    for i in range(30):
        _serve_one(d, clock, i)
    for ep in d.store.all():  # fresh, idle metrics: the saturation detector sheds nothing by itself
        ep.metrics.updated_at = clock.t
    text = "request x " * 50
    tight = {"x-slo-ttft-ms": "5"}  # nobody is predicted under 5 ms (fast ~50 ms)
    with pytest.raises(ShedError, match="predicted to miss") as err:
        d.pick(InferenceRequest("s1", "m", prompt_text=text, headers=tight, priority=-1))
    assert err.value.status == 429
    # Not sheddable: served anyway (every endpoint kept, best headroom wins).
    assert d.pick(InferenceRequest("c1", "m", prompt_text=text, headers=tight)).primary.address == FAST
    # Sheddable but some endpoint meets the SLO: served there.
    ok = d.pick(InferenceRequest("s2", "m", prompt_text=text, headers={"x-slo-ttft-ms": "200"}, priority=-1))
    assert ok.primary.address == FAST
