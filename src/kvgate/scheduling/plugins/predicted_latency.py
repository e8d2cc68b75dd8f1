"""Routing on predicted latency, learned in the picker (the reference runs a prediction sidecar).

- ``predicted-latency-scorer`` predicts each endpoint's TTFT and TPOT for this request
  (``kvgate.scheduling.latency``: per-endpoint online models learned from the first tokens and
  finishes the Director observes) and scores by SLO headroom: the request's ``x-slo-ttft-ms`` /
  ``x-slo-tpot-ms`` (or the ``x-llm-d-`` names) minus the prediction, relative to the SLO, the
  tighter of the two when both are set. Without an SLO header it prefers the lowest predicted TTFT.
- ``slo-headroom-tier-filter`` keeps the endpoints predicted to meet the request's SLOs (positive
  headroom), or all of them when none is; it passes everything through when the request has no SLO.
  With ``shedSheddable: true`` a sheddable request (priority < 0) that no endpoint is predicted to
  serve within its SLO is rejected instead (429): better refused now than served late.

``confidence`` (z) judges an endpoint by ``prediction + z * std``; 0 (the default) uses the mean, so
endpoints the model knows nothing about look fast and get tried, which is how they get learned; for
the same reason an endpoint not picked in ``reprobeEvery`` picks (100) is predicted from the prior
once more, so one judged slow is re-measured now and then instead of never.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import (
    ConfigError,
    CycleState,
    Filter,
    Params,
    Plugin,
    PluginHandle,
    PostPick,
    ResponseObserver,
    Scorer,
    TTFTEstimate,
    TTFTOracle,
    add_explanation,
    cache_expectation,
)
from kvgate.scheduling.latency import LatencyPredictor, Prediction, features
from kvgate.scheduling.registry import register
from kvgate.scheduling.types import InferenceRequest, PredictedMissError, prompt_tokens

# llm-d's names first, the old ones their deprecated aliases (llm-d-router TTFTSLOHeaderKey: rev-c36 F3)
SLO_TTFT_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")
SLO_TPOT_HEADERS = ("x-llm-d-slo-tpot-ms", "x-slo-tpot-ms")
# With no SLO: score = (best + s) / (ttft + s); s keeps millisecond differences from looking huge.
TTFT_SMOOTHING_S = 0.01


def _header_seconds(req: InferenceRequest, names: Sequence[str]) -> float | None:
    for name in names:
        raw = req.headers.get(name)
        if raw is None:
            continue
        try:
            ms = float(raw)
        except ValueError:
            continue  # a malformed SLO is no SLO (flow control's slo-deadline ordering does the same)
        if ms > 0.0 and ms == ms and ms != float("inf"):
            return ms / 1000.0
    return None


def slo_targets(req: InferenceRequest) -> tuple[float | None, float | None]:
    """The request's (TTFT, TPOT) objectives in seconds, None where it sets none."""
    return _header_seconds(req, SLO_TTFT_HEADERS), _header_seconds(req, SLO_TPOT_HEADERS)


@register("predicted-latency-scorer")
class PredictedLatencyScorer(Scorer, PostPick, ResponseObserver, TTFTOracle):
    bounded = True

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        *,
        confidence: float = 0.0,
        forgetting: float = 0.99,
        max_endpoints: int = 4096,
        reprobe_every: int = 100,
    ) -> None:
        super().__init__(name, handle)
        self.confidence = confidence
        self.predictor = LatencyPredictor(
            forgetting=forgetting, max_endpoints=max_endpoints, reprobe_every=reprobe_every
        )
        self._key = ("predicted-latency", name)

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> PredictedLatencyScorer:
        s = cls(
            name,
            handle,
            confidence=params.get_float("confidence", 0.0, min=0.0, max=10.0),
            forgetting=params.get_float("forgetting", 0.99, min=0.5, max=1.0),
            max_endpoints=params.get_int("maxEndpoints", 4096, min=1),
            reprobe_every=params.get_int("reprobeEvery", 100, min=0),
        )
        params.finish()
        return s

    def predictions(
        self, cycle: CycleState, endpoints: Sequence[Endpoint]
    ) -> dict[str, tuple[list[float], Prediction]]:
        """Features and prediction per endpoint address, computed once per cycle (filter and scorer share)."""
        got: dict[str, tuple[list[float], Prediction]] = cycle.data.setdefault(self._key, {})
        req = cycle.request
        p = prompt_tokens(req.prompt_tokens, req.prompt_text, req.token_ids)
        expected = cache_expectation(cycle)
        staleness = self.handle.staleness
        for ep in endpoints:
            a = ep.address
            if a in got:
                continue
            cached = 1.0 - expected.uncached_fraction(a) if expected is not None else 0.0
            x = features(ep, p, cached, cycle.now, staleness)
            got[a] = (x, self.predictor.predict(a, x))
        return got

    def ttft_estimates(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[TTFTEstimate]:
        # An endpoint due a re-probe is scored from the prior (so it gets tried) but judged by its own
        # model: the prior's 0 samples would read as "unknown" and switch a judge off.
        preds = self.predictions(cycle, endpoints)
        out: list[TTFTEstimate] = []
        for ep in endpoints:
            x, pr = preds[ep.address]
            if self.predictor.due_reprobe(ep.address):
                pr = self.predictor.predict(ep.address, x, reprobe=False)
            out.append(TTFTEstimate(pr.ttft, pr.ttft_std, pr.samples))
        return out

    def samples(self, address: str) -> int:
        return self.predictor.samples(address)

    def ttft_floor(self, cycle: CycleState, endpoints: Sequence[Endpoint], z: float = 0.0) -> float:
        preds = self.predictions(cycle, endpoints)
        best = float("inf")
        for ep in endpoints:
            x, pr = preds[ep.address]
            if pr.samples or self.predictor.due_reprobe(ep.address):
                # The same prompt (uncached and cached parts, features 4 and 5) with no load at all.
                idle = [x[0], 0.0, 0.0, 0.0, x[4], x[5], 0.0]
                pr = self.predictor.predict(ep.address, idle, reprobe=False)
                best = min(best, pr.ttft + z * pr.ttft_std)
        return 0.0 if best == float("inf") else best

    def headroom(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float] | None:
        """Relative SLO headroom per endpoint (1 - predicted / SLO, the tighter objective; TTFT counted
        from the request's arrival), or None when the request sets no SLO."""
        ttft_slo, tpot_slo = slo_targets(cycle.request)
        if ttft_slo is None and tpot_slo is None:
            return None
        preds = self.predictions(cycle, endpoints)
        z = self.confidence
        # Time already spent since arrival (a flow-control queue, retries) is gone from the TTFT budget.
        arrived = cycle.request.arrival_time
        waited = cycle.now - arrived if 0.0 < arrived <= cycle.now else 0.0
        out: list[float] = []
        for ep in endpoints:
            pr = preds[ep.address][1]
            h = float("inf")
            if ttft_slo is not None:
                h = min(h, 1.0 - (waited + pr.ttft + z * pr.ttft_std) / ttft_slo)
            if tpot_slo is not None:
                h = min(h, 1.0 - (pr.tpot + z * pr.tpot_std) / tpot_slo)
            out.append(h)
        return out

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        hr = self.headroom(cycle, endpoints)
        preds = self.predictions(cycle, endpoints)
        if hr is None:
            z = self.confidence
            ttfts = [preds[ep.address][1].ttft + z * preds[ep.address][1].ttft_std for ep in endpoints]
            lo, s = min(ttfts), TTFT_SMOOTHING_S
            scores = [(lo + s) / (t + s) for t in ttfts]
        else:
            lo, hi = min(hr), max(hr)
            scores = [1.0 if hi <= lo else (h - lo) / (hi - lo) for h in hr]
        if cycle.explain:
            add_explanation(
                cycle,
                "predicted_latency",
                {
                    ep.address: {
                        "ttft": preds[ep.address][1].ttft,
                        "ttft_std": preds[ep.address][1].ttft_std,
                        "tpot": preds[ep.address][1].tpot,
                        "tpot_std": preds[ep.address][1].tpot_std,
                        "samples": preds[ep.address][1].samples,
                        **({"headroom": hr[i]} if hr is not None else {}),
                    }
                    for i, ep in enumerate(endpoints)
                },
            )
        return scores

    # -- learning --------------------------------------------------------------------------------

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        x, _ = self.predictions(cycle, [endpoint])[endpoint.address]
        self.predictor.picked(cycle.request.request_id, endpoint.address, x, cycle.now)

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        self.predictor.first_token(request.request_id, endpoint.address, now)

    def on_finished(
        self, request: InferenceRequest, endpoint: Endpoint, output_tokens: int, ok: bool, now: float
    ) -> None:
        # (TPOT is a sequence's: the output of ``n`` choices is their sum, decoded side by side)
        out = output_tokens // request.sequences if request.sequences > 1 else output_tokens
        self.predictor.finished(request.request_id, endpoint.address, out, ok, now)


@register("slo-headroom-tier-filter")
class SLOHeadroomTierFilter(Filter):
    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        *,
        predictor_ref: str = "",
        path: str = "",
        shed_sheddable: bool = False,
    ) -> None:
        super().__init__(name, handle)
        self.predictor_ref = predictor_ref
        self.shed_sheddable = shed_sheddable
        self.path = path
        self._scorer: PredictedLatencyScorer | None = None

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> SLOHeadroomTierFilter:
        f = cls(
            name,
            handle,
            predictor_ref=params.get_str("predictorRef", ""),
            path=params.path,
            shed_sheddable=params.get_bool("shedSheddable", False),
        )
        params.finish()
        return f

    @property
    def scorer(self) -> PredictedLatencyScorer:
        """The predicted-latency-scorer whose predictions this filter reads (resolved once)."""
        if self._scorer is None:
            h = self.handle
            p = h.plugin(self.predictor_ref) if self.predictor_ref else h.find(PredictedLatencyScorer)
            if not isinstance(p, PredictedLatencyScorer):
                want = repr(self.predictor_ref) if self.predictor_ref else "any"
                raise ConfigError(
                    f"{self.path}.predictorRef",
                    f"{want} names no predicted-latency-scorer in plugins (the filter reads its predictions)",
                )
            self._scorer = p
        return self._scorer

    def dependencies(self) -> list[Plugin]:
        # The scorer must learn (post-pick hook) even in a profile that filters with it but does not score.
        return [self.scorer]

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        hr = self.scorer.headroom(cycle, endpoints)
        if hr is None:
            return endpoints
        kept = [ep for ep, h in zip(endpoints, hr, strict=True) if h > 0.0]
        if not kept and self.shed_sheddable and cycle.request.sheddable:
            raise PredictedMissError("sheddable request predicted to miss its SLO on every endpoint")
        return kept or endpoints
