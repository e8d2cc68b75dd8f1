"""llm-d's ``no-hit-lru-scorer``: spread cold requests (no candidate holds any of the prompt's prefix), which
grow the KV cache most, over the endpoints that took a cold request least recently.

As llm-d-router's (``scorer/nohitlru``): for a cold request, endpoints that never took one score highest
(1, then down by 1/(n-1) in candidate order), then the others from the least recently used on, the rank
continuing after the never-used ones; a request with a prefix hit anywhere scores 0.5 everywhere; the
endpoint a cold request is sent to becomes the most recently used. The LRU holds at most ``lruSize``
(1,024) endpoints. The prefix match is the prefix plugin's (``prefixMatchInfoProducerName``, as the filter).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle, PostPick, Scorer
from kvgate.scheduling.plugins.prefix_cache import (
    PRODUCER_KEY,
    PrefixCacheScorer,
    UsesPrefixPlugin,
    prefix_match,
)
from kvgate.scheduling.registry import register

DEFAULT_LRU_SIZE = 1024
_COLD = "no-hit-lru.cold"  # CycleState.data: the request was cold when scored


class NoHitLRUScorer(UsesPrefixPlugin, Scorer, PostPick):
    bounded = True

    def __init__(
        self, name: str, handle: PluginHandle, lru_size: int = DEFAULT_LRU_SIZE, prefix_ref: str | None = None
    ) -> None:
        super().__init__(name, handle)
        self.lru_size = lru_size
        self.prefix_ref = prefix_ref
        self._prefix: PrefixCacheScorer | None = None
        self.lru: OrderedDict[str, None] = OrderedDict()  # address, least recently used first

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> NoHitLRUScorer:
        ref = params.get_str("prefixPluginRef", "") or params.get_str(PRODUCER_KEY, "") or None
        # (the reference's two deprecated keys, "never used" there: taken, and nothing done with them)
        params.get_str("prefixPluginType", "")
        params.get_str("prefixPluginName", "")
        s = cls(name, handle, params.get_int("lruSize", DEFAULT_LRU_SIZE, min=1), ref)
        params.finish()
        return s

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        m = prefix_match(cycle)
        cold = m is None or not any(m.matched.get(ep.address, 0) > 0 for ep in endpoints)
        cycle.data[_COLD] = cold
        if not cold:
            return [0.5] * len(endpoints)
        n = len(endpoints)
        if n == 1:
            return [1.0]
        pos = {a: i for i, a in enumerate(self.lru)}
        never = [i for i, ep in enumerate(endpoints) if ep.address not in pos]
        out = [0.0] * n
        for rank, i in enumerate(never):
            out[i] = 1.0 - rank / (n - 1)
        for i, ep in enumerate(endpoints):
            if ep.address in pos:
                out[i] = max(0.0, 1.0 - (len(never) + pos[ep.address]) / (n - 1))
        return out

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        if not cycle.data.get(_COLD):
            return
        self.lru[endpoint.address] = None
        self.lru.move_to_end(endpoint.address)
        if len(self.lru) > self.lru_size:
            self.lru.popitem(last=False)


# Registered below the class, not by decorator: compiled (scripts/build_compiled.py), a decorated class is
# not native, and it may not subclass the native ``UsesPrefixPlugin`` (nor may an interpreted one).
register("no-hit-lru-scorer")(NoHitLRUScorer)
