"""Baseline policies as pickers, so each is a whole policy on its own: round robin and least request."""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Picker, PluginHandle
from kvgate.scheduling.registry import register


@register("round-robin")
class RoundRobinPicker(Picker):
    """Next endpoint in address order each pick (ignores scores). Sorted so the order is stable however
    the candidate list was built."""

    def __init__(self, name: str, handle: PluginHandle) -> None:
        super().__init__(name, handle)
        self._next = 0

    def pick(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        eps = sorted(endpoints, key=lambda e: e.address) if len(endpoints) > 1 else endpoints
        ep = eps[self._next % len(eps)]
        self._next += 1
        return [ep]


@register("least-request")
class LeastRequestPicker(Picker):
    """Fewest of this picker's own in-flight requests (no scrape lag; each request once, whatever its ``n``,
    as a least-request router counts: ``InFlight.calls``); ties broken at random."""

    def pick(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        loads = [ep.inflight.calls for ep in endpoints]
        low = min(loads)
        top = [i for i, x in enumerate(loads) if x == low]
        return [endpoints[top[0] if len(top) == 1 else self.handle.rng.choice(top)]]
