"""``session-affinity-scorer``: send a session's requests back to the endpoint that served it last.

The map session key -> endpoint address is an LRU bounded by ``maxSessions`` (100,000), so a flood of
one-off session ids cannot grow memory; entries for removed endpoints simply stop matching. The key is
held as its 64-bit xxh3 digest, not as sent: a client's ``x-session-id`` (up to the 64 KiB head) or body
``user`` (up to ``maxBodyBytes``) would otherwise pin its own size per entry (review s28-qa Q3). Equal keys
have equal digests, so a session routes as before; a collision (~1e-10 over 100,000 sessions) only costs
an affinity hint. (Upstream llm-d's scorer holds nothing: the pod rides in a cookie it sets.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import xxhash

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle, PostPick, Scorer
from kvgate.scheduling.registry import register

_CYCLE_KEY = "session-affinity-digest"


def session_digest(key: str) -> int:
    """What the scorer keeps for ``key``: a fixed-size digest, whatever the key's length."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogatepass"))


def _digest(cycle: CycleState) -> int | None:
    """The request's session digest, hashed once per cycle (score, then on_picked)."""
    key = cycle.request.session_key
    if not key:
        return None
    digest = cycle.data.get(_CYCLE_KEY)
    if digest is None:
        digest = cycle.data[_CYCLE_KEY] = session_digest(key)
    return digest


@register("session-affinity-scorer")
class SessionAffinityScorer(Scorer, PostPick):
    bounded = True

    def __init__(self, name: str, handle: PluginHandle, max_sessions: int = 100_000) -> None:
        super().__init__(name, handle)
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[int, str] = OrderedDict()  # session_digest(key) -> address

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> SessionAffinityScorer:
        s = cls(name, handle, params.get_int("maxSessions", 100_000, min=1))
        params.finish()
        return s

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        digest = _digest(cycle)
        last = self.sessions.get(digest) if digest is not None else None
        if last is None:
            return [0.0] * len(endpoints)
        return [1.0 if ep.address == last else 0.0 for ep in endpoints]

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        digest = _digest(cycle)
        if digest is None:
            return
        self.sessions[digest] = endpoint.address
        self.sessions.move_to_end(digest)
        if len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)
