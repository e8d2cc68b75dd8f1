"""Online latency prediction: TTFT and TPOT per endpoint from the signals the picker has at pick time.

The reference runs a sidecar that trains XGBoost / Bayesian ridge on the same features; here it is a
few floats per endpoint inside the picker. Each endpoint has two linear models (TTFT, TPOT) fit by
recursive least squares with exponential forgetting: O(d^2) per update and per prediction with d = 7
features, no dependency, and the covariance ``P`` doubles as the posterior of a Bayesian linear model,
so each prediction comes with an uncertainty (``std``) that shrinks as data arrives.

Memory is bounded: a fixed-size model per endpoint, at most ``max_endpoints`` endpoints (least recently
used forgotten), and at most ``max_pending`` picks remembered between pick and first token.
Time is always passed in (the Director's clock); nothing here reads a wall clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from operator import mul

from kvgate.datalayer.endpoint import Endpoint


class RLSModel:
    """Recursive least squares with forgetting factor ``lam`` (1 = never forget).

    ``P`` is the parameter covariance divided by the noise variance; the noise variance is an
    exponentially weighted mean of squared prediction errors. A trace bound on ``P`` keeps forgetting
    from blowing up directions the data does not excite (covariance wind-up).
    """

    __slots__ = ("lam", "n", "noise_var", "p", "p_max", "theta")

    def __init__(
        self, dim: int, *, lam: float = 0.99, prior_var: float = 100.0, noise_var: float = 1.0
    ) -> None:
        if not 0.0 < lam <= 1.0:
            raise ValueError(f"forgetting factor must be in (0, 1], got {lam}")
        self.lam = lam
        self.theta = [0.0] * dim
        self.p = [[prior_var if i == j else 0.0 for j in range(dim)] for i in range(dim)]
        self.p_max = prior_var * dim
        self.noise_var = noise_var
        self.n = 0

    # Hot path (per endpoint per pick): sum(map(mul, ...)) keeps the d^2 loop in C.
    def _px(self, x: Sequence[float]) -> list[float]:
        return [sum(map(mul, row, x)) for row in self.p]

    def predict(self, x: Sequence[float]) -> tuple[float, float]:
        """``(mean, variance)`` of a new observation at ``x`` (parameter + noise uncertainty)."""
        return sum(map(mul, self.theta, x)), self.noise_var * (1.0 + self.param_var(x))

    def param_var(self, x: Sequence[float]) -> float:
        """``x' P x``: how unsure the model is at ``x``, in units of the noise variance."""
        s = 0.0
        for row, xi in zip(self.p, x, strict=True):
            if xi:
                s += xi * sum(map(mul, row, x))
        return s if s > 0.0 else 0.0

    def update(self, x: Sequence[float], y: float) -> None:
        px = self._px(x)
        denom = self.lam + sum(map(mul, x, px))
        err = y - sum(map(mul, self.theta, x))
        # Noise estimate from the a-priori error, scaled back by its expected inflation (1 + x'Px).
        e2 = err * err * self.lam / denom
        self.noise_var = e2 if self.n == 0 else self.noise_var + 0.05 * (e2 - self.noise_var)
        k = [v / denom for v in px]
        self.theta = [t + ki * err for t, ki in zip(self.theta, k, strict=True)]
        trace = sum(self.p[i][i] for i in range(len(x)))
        scale = 1.0 / self.lam if trace < self.p_max else 1.0
        self.p = [[(self.p[i][j] - k[i] * px[j]) * scale for j in range(len(x))] for i in range(len(x))]
        self.n += 1


@dataclass(slots=True, frozen=True)
class Prediction:
    """Predicted seconds with one standard deviation of uncertainty."""

    ttft: float
    ttft_std: float
    tpot: float
    tpot_std: float
    samples: int  # TTFT observations behind this endpoint's model


def features(
    ep: Endpoint, input_tokens: int, cached_fraction: float, now: float, staleness: float
) -> list[float]:
    """The model's inputs, scaled to order one: bias, queued and running requests, KV use, uncached
    and cached prompt (thousands of tokens), uncached prefill tokens already in flight (thousands)."""
    inf, met = ep.inflight, ep.metrics
    queued = inf.requests - inf.decoding
    running = inf.decoding
    kv = 0.0
    t = met.updated_at
    if t is not None and now - t <= staleness:  # scraped signals only while fresh
        queued = max(queued, met.waiting_queue_size)
        running = max(running, met.running_requests)
        kv = met.kv_cache_usage
    cached = input_tokens * min(1.0, max(0.0, cached_fraction))
    return [
        1.0,
        float(queued),
        float(running),
        kv,
        (input_tokens - cached) / 1000.0,
        cached / 1000.0,
        inf.pending_prefill_tokens / 1000.0,
    ]


DIM = 7
MIN_TPOT_S = 1e-4  # faster than 10,000 tokens/s for one sequence = not a real decode span


class _EndpointModels:
    __slots__ = ("last_pick", "tpot", "ttft")

    def __init__(self, lam: float, prior_var: float) -> None:
        self.last_pick = 0  # the predictor's pick count when this endpoint was last picked
        # Priors: TTFT noise ~ (100 ms)^2, TPOT noise ~ (10 ms)^2 until the first residuals arrive.
        self.ttft = RLSModel(DIM, lam=lam, prior_var=prior_var, noise_var=0.01)
        self.tpot = RLSModel(DIM, lam=lam, prior_var=prior_var, noise_var=1e-4)


@dataclass(slots=True)
class _Pending:
    """A pick awaiting its first token: the features it was predicted from and when it was made."""

    x: list[float]
    at: float
    first_at: float | None = None


class LatencyPredictor:
    """Per-endpoint TTFT/TPOT models, trained from what the Director observes."""

    def __init__(
        self,
        *,
        forgetting: float = 0.99,
        prior_var: float = 100.0,
        max_endpoints: int = 4096,
        max_pending: int = 1 << 16,
        reprobe_every: int = 0,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        # An endpoint judged slow is never picked, so never re-measured: after this many picks
        # elsewhere it predicts from the prior again (optimistic) and gets one request. 0 = never.
        self.reprobe_every = reprobe_every
        self._picks = 0
        self.forgetting = forgetting
        self.prior_var = prior_var
        self.max_endpoints = max_endpoints
        self.max_pending = max_pending
        self._models: OrderedDict[str, _EndpointModels] = OrderedDict()
        self._prior = _EndpointModels(forgetting, prior_var)
        self._pending: OrderedDict[tuple[str, str], _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._models)

    def pending(self) -> int:
        return len(self._pending)

    def _get(self, address: str, create: bool) -> _EndpointModels | None:
        m = self._models.get(address)
        if m is None:
            if not create:
                return None
            m = self._models[address] = _EndpointModels(self.forgetting, self.prior_var)
            if len(self._models) > self.max_endpoints:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(address)
        return m

    def samples(self, address: str) -> int:
        """TTFT observations behind the model of ``address`` (its own, due a re-probe or not)."""
        m = self._models.get(address)
        return m.ttft.n if m is not None else 0

    def due_reprobe(self, address: str) -> bool:
        """Not picked in ``reprobe_every`` picks: ``predict`` answers from the prior for it."""
        m = self._models.get(address)
        return m is not None and bool(self.reprobe_every) and self._picks - m.last_pick >= self.reprobe_every

    def predict(self, address: str, x: Sequence[float], reprobe: bool = True) -> Prediction:
        """``reprobe=False``: an endpoint due a re-probe answers from its own model all the same (what
        is known of it, for a judge rather than a router)."""
        m = self._get(address, create=False)
        if m is None or (reprobe and self.reprobe_every and self._picks - m.last_pick >= self.reprobe_every):
            m = self._prior  # never observed, or due a re-probe: the prior (zero mean, wide), shared
        ttft, v1 = m.ttft.predict(x)
        tpot, v2 = m.tpot.predict(x)
        return Prediction(max(0.0, ttft), math.sqrt(v1), max(0.0, tpot), math.sqrt(v2), m.ttft.n)

    def observe_ttft(self, address: str, x: Sequence[float], seconds: float) -> None:
        m = self._get(address, create=True)
        assert m is not None
        m.ttft.update(x, seconds)

    def observe_tpot(self, address: str, x: Sequence[float], seconds: float) -> None:
        m = self._get(address, create=True)
        assert m is not None
        m.tpot.update(x, seconds)

    # -- the request life cycle: pick -> first token -> finish ------------------------------------

    def picked(self, request_id: str, address: str, x: Sequence[float], now: float) -> None:
        self._picks += 1
        m = self._get(address, create=True)
        assert m is not None
        m.last_pick = self._picks
        self._pending[(request_id, address)] = _Pending(list(x), now)
        if len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)

    def first_token(self, request_id: str, address: str, now: float) -> None:
        rec = self._pending.get((request_id, address))
        if rec is None or rec.first_at is not None:
            return
        rec.first_at = now
        self.observe_ttft(address, rec.x, max(0.0, now - rec.at))

    def finished(self, request_id: str, address: str, output_tokens: int, ok: bool, now: float) -> None:
        rec = self._pending.pop((request_id, address), None)
        if rec is None or not ok:
            return
        t1 = rec.first_at
        if t1 is None or output_tokens < 2:
            return
        tpot = (now - t1) / (output_tokens - 1)
        # A non-streamed response reports its first token with its last: no decode time to learn from.
        if tpot >= MIN_TPOT_S:
            self.observe_tpot(address, rec.x, tpot)
