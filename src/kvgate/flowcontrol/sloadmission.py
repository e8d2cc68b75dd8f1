"""SLO admission on the learned latency model (``flowControl.sloAdmission``, kvgate's key).

At dispatch (late binding: the moment a request leaves the queue, or arrives to an empty one), a
sheddable request (priority < 0) is judged by the latency model (a ``TTFTOracle``, i.e. a
``predicted-latency-scorer`` in ``plugins``): its predicted TTFT on its best endpoint, the model's mean
plus ``confidence`` standard deviations, plus the time it has already waited since it arrived, against
its TTFT SLO (``x-llm-d-slo-ttft-ms``, else ``x-slo-ttft-ms``, else ``flowControl.defaultTTFTSLO``).

- predicted to make it: it is picked as usual;
- predicted to miss, but it could still make it were the load to fall (the model's TTFT for it on an
  idle endpoint fits in what is left): ``PredictedSLOMissError`` with ``give_up_at`` in the future; the
  dispatcher holds it in the queue and tries it again later;
- it cannot make it any more: ``give_up_at`` has passed; the dispatcher sheds it (429,
  ``RejectedPredictedMiss``). Served late it would only take capacity from requests that can still
  meet theirs.

Requests that are not sheddable are never judged. An endpoint whose model has learned from fewer than
``MIN_SAMPLES`` first tokens is taken as able to make it (an unknown endpoint does not shed anything);
so flow control arms a queued request's give-up at its SLO deadline only when the model knows every
candidate endpoint (``knows``, the Director's ``slo_known``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.policies import SLO_TTFT_HEADERS, header_ms
from kvgate.scheduling.framework import CycleState, TTFTOracle
from kvgate.scheduling.types import PredictedMissError

MIN_SAMPLES = 20  # first tokens an endpoint's model needs before its predictions may hold or shed


class PredictedSLOMissError(PredictedMissError):
    """A sheddable request the latency model predicts to miss its TTFT SLO on every endpoint.
    ``give_up_at``: the clock time after which it cannot make it even on an idle endpoint (held until
    then, shed after)."""

    def __init__(self, message: str, give_up_at: float) -> None:
        super().__init__(message)
        self.give_up_at = give_up_at


class SLOAdmission:
    def __init__(self, oracle: TTFTOracle, *, confidence: float, default_slo: float) -> None:
        self.oracle = oracle
        self.confidence = confidence
        self.default_slo = default_slo

    def knows(self, endpoints: Sequence[Endpoint]) -> bool:
        """Has the model learned every one of ``endpoints`` (``MIN_SAMPLES`` first tokens each)? Until
        then it judges nothing, and flow control does not give up on a request at its SLO deadline."""
        oracle = self.oracle
        return bool(endpoints) and all(oracle.samples(ep.address) >= MIN_SAMPLES for ep in endpoints)

    def slo(self, cycle: CycleState) -> float:
        return header_ms(cycle.request.headers, SLO_TTFT_HEADERS) or self.default_slo

    def check(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> None:
        """Return when ``cycle.request`` is not sheddable or is predicted to make its SLO on some
        endpoint; raise ``PredictedSLOMissError`` otherwise."""
        req = cycle.request
        if not req.sheddable or not endpoints:
            return
        now = cycle.now
        arrived = req.arrival_time if 0.0 < req.arrival_time <= now else now
        deadline = arrived + self.slo(cycle)
        left = deadline - now
        z = self.confidence
        best = float("inf")
        for est in self.oracle.ttft_estimates(cycle, endpoints):
            if est.samples < MIN_SAMPLES:
                return  # an endpoint the model does not know yet: no grounds to hold or shed
            best = min(best, est.mean + z * est.std)
        if best <= left:
            return
        # Judged by mean + z x std, it can pass only while that much is left even on an idle endpoint.
        floor = self.oracle.ttft_floor(cycle, endpoints, z) if left > 0.0 else 0.0
        raise PredictedSLOMissError(
            f"sheddable request predicted to miss its TTFT SLO: {best * 1000:.0f} ms predicted on the "
            f"best endpoint, {max(0.0, left) * 1000:.0f} ms left",
            deadline - floor,
        )
