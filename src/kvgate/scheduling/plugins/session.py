"""``session-affinity-scorer``: send a session's requests back to the endpoint that served it last.

The map session key -> endpoint address is an LRU bounded by ``maxSessions`` (100,000), so a flood of
one-off session ids cannot grow memory; entries for removed endpoints simply stop matching.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle, PostPick, Scorer
from kvgate.scheduling.registry import register


@register("session-affinity-scorer")
class SessionAffinityScorer(Scorer, PostPick):
    bounded = True

    def __init__(self, name: str, handle: PluginHandle, max_sessions: int = 100_000) -> None:
        super().__init__(name, handle)
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[str, str] = OrderedDict()

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> SessionAffinityScorer:
        s = cls(name, handle, params.get_int("maxSessions", 100_000, min=1))
        params.finish()
        return s

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        key = cycle.request.session_key
        last = self.sessions.get(key) if key else None
        if last is None:
            return [0.0] * len(endpoints)
        return [1.0 if ep.address == last else 0.0 for ep in endpoints]

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        key = cycle.request.session_key
        if not key:
            return
        self.sessions[key] = endpoint.address
        self.sessions.move_to_end(key)
        if len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)
