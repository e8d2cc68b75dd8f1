"""llm-d's ``active-request-scorer``: prefer endpoints with fewer requests in flight (decode-bound work).

As llm-d-router's (``scorer/activerequest``): an endpoint with no more than ``idleThreshold`` (0) requests
in flight scores 1; a busier one ``(max - n) / max * maxBusyScore`` (1.0), ``max`` the most any of the
endpoints being scored has in flight. The counts are kvgate's own in-flight accounting
(``Endpoint.inflight.requests``, charged at dispatch, freed at the finish, in sequences: a request for ``n``
choices counts ``n``), what the reference reads from its ``inflight-load-producer``
(``inFlightLoadProducerName``: checked to name one, see config.picker). Its deprecated ``requestTimeout``
(the older scorer's leak guard, ignored by the current one) is checked and, when set, one WARNING line.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle, Scorer
from kvgate.scheduling.registry import register


@register("active-request-scorer")
class ActiveRequestScorer(Scorer):
    bounded = True

    def __init__(
        self, name: str, handle: PluginHandle, idle_threshold: int = 0, max_busy: float = 1.0
    ) -> None:
        super().__init__(name, handle)
        self.idle_threshold = idle_threshold
        self.max_busy = max_busy

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> ActiveRequestScorer:
        if params.has("requestTimeout"):
            params.get_duration("requestTimeout", 120.0, positive=True)
            params.warn(
                "requestTimeout", "not applied: kvgate's in-flight count ends with each request's end"
            )
        params.get_str("inFlightLoadProducerName", "")  # (kvgate's own count: the name is only checked)
        s = cls(
            name,
            handle,
            params.get_int("idleThreshold", 0, min=0),
            params.get_float("maxBusyScore", 1.0, min=0.0, max=1.0),
        )
        params.finish()
        return s

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        most = max((ep.inflight.requests for ep in endpoints), default=0)  # (the reference's: the scored)
        return [
            1.0
            if ep.inflight.requests <= self.idle_threshold
            else (most - ep.inflight.requests) / most * self.max_busy
            for ep in endpoints
        ]
