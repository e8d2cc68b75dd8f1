"""Bounded label values for a client-supplied id, by the sticky rule both label sets share.

Flow control's ``fairness_id`` label (``kvgate.flowcontrol.metrics.FlowLabels``) and llm-d's per-request
families' (``kvgate.openai.labels.FairnessLabels``) take their values from an id any client may send, so a
label per id would let clients grow the metrics without bound. ``openai/`` may not import
``flowcontrol/``, so the rule lives here, below both (as ``kvgate/aio.py``: it imports no ``kvgate``
package), and each keeps its own instance (review s19-met / closing-s19 D1: the two were copies):

- an id earns a label of its own once ``count`` saw it ``promote_at`` times, at most ``size`` ids per
  instance; every other id is reported as ``other``, and so is an id that is literally ``other`` (it never
  gets a label apart from the aggregate's); the default flow (``default-flow``, a request that names none)
  always has its own, outside the ``size``;
- a label once given is never taken away: no series is ever removed, every counter stays monotonic;
- the count: ids without a label are counted in a Space-Saving table of ``candidates`` ids (an id not in
  it replaces the least counted one and inherits that count as its *error*). An id is promoted on its
  *guaranteed* count (count minus error), which only grows with the id's own requests since it entered
  the table: a spray of ids each sent fewer than ``promote_at`` times is never promoted, however long it
  lasts. Once the labels are all given the table is dropped and nothing more is counted.

So the label takes at most ``size + 2`` values over the instance's whole life (``other`` and the default
flow's included), whatever ids clients send.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from itertools import count as _sequence

MAX_LABELS = 16  # ids with a label of their own, per instance (the default flow's not one of them)
CANDIDATES = 4 * MAX_LABELS  # the Space-Saving table's size
PROMOTE_AT = 32  # an id's guaranteed count that earns it a label
OTHER = "other"  # every id without a label of its own
# The flow of a request that names none (GIE's ``x-gateway-inference-fairness-id`` default; the same
# value as ``kvgate.openai.protocol.DEFAULT_FAIRNESS_ID``): always its own label.
DEFAULT_FLOW = "default-flow"


class StickyLabels:
    """Which ids have a label of their own (the module docstring). ``count`` an id's request (or outcome);
    ``label`` is a set lookup. ``promoted`` is called once per id given a label (a subclass's hook).
    ``default``: the id always labelled as itself (the default flow)."""

    __slots__ = ("candidates", "counts", "given", "labelled", "low", "promote_at", "seq", "size")

    def __init__(
        self,
        size: int = MAX_LABELS,
        candidates: int = CANDIDATES,
        promote_at: int = PROMOTE_AT,
        default: str = DEFAULT_FLOW,
    ) -> None:
        self.size, self.candidates, self.promote_at = size, max(1, candidates), max(1, promote_at)
        self.counts: dict[str, list[int]] = {}  # the Space-Saving table: id -> [count, error]
        # The least counted id, found in O(log n) amortised (review s11-fc L3; was a min() over the
        # table per unknown id): a heap of (count when pushed, seq, id), seq the order ids entered the
        # table, one item per id in it plus at most ``size`` of promoted ids. An increment does not
        # touch the heap, so an item's count is a lower bound; a popped item whose count is stale is
        # pushed back with the current one. The first up-to-date item is the least count, ties to the
        # smallest seq, the id that entered the table first: the same choice as a min() over the
        # table in its (insertion) order.
        self.low: list[tuple[int, int, str]] = []
        self.seq = _sequence()
        # ``default``: always its own label, not one of ``size`` (the default flow; for model names, the
        # empty name of a request the caller knows no model of)
        self.labelled: set[str] = {default}
        self.given = 0  # of ``labelled``, the ids ``give`` labelled (outside ``size``, as ``default``)

    def label(self, ident: str) -> str:
        """``ident``'s label: its own once promoted, else ``other``."""
        return ident if ident in self.labelled else OTHER

    def give(self, idents: Iterable[str]) -> None:
        """Labels of their own from now on for ``idents``, outside ``size`` as ``default`` is: names a
        configuration lists (bounded by it; ``kvgate serve``'s models: qa36b-F3), never a client's."""
        for ident in idents:
            if ident and ident != OTHER and ident not in self.labelled:
                self.labelled.add(ident)
                self.given += 1
                self.counts.pop(ident, None)  # (its heap item goes when popped)

    def count(self, ident: str) -> None:
        """One more request (or outcome) of ``ident``; promotes it at ``promote_at`` guaranteed."""
        if ident in self.labelled or ident == OTHER or len(self.labelled) - self.given > self.size:
            return
        counts = self.counts
        entry = counts.get(ident)
        if entry is not None:
            entry[0] += 1
        else:
            n = self._evict() if len(counts) >= self.candidates else 0
            counts[ident] = entry = [n + 1, n]
            heapq.heappush(self.low, (n + 1, next(self.seq), ident))
        if entry[0] - entry[1] >= self.promote_at:
            del counts[ident]  # (its heap item goes when popped: its id is no longer in the table)
            self.labelled.add(ident)
            self.promoted(ident)
            if len(self.labelled) - self.given > self.size:  # (the default flow's is not one of ``size``)
                counts.clear()
                self.low.clear()

    def promoted(self, ident: str) -> None:
        """``ident`` was just given a label of its own (nothing here; flow control moves its queued
        requests' gauges)."""

    def _evict(self) -> int:
        """Drop the least counted id from the full table; its count."""
        counts, low = self.counts, self.low
        while True:
            n, seq, ident = low[0]
            entry = counts.get(ident)
            if entry is None:  # promoted (an evicted id's item leaves with it; a labelled id stays out)
                heapq.heappop(low)
            elif entry[0] != n:  # counted since pushed
                heapq.heapreplace(low, (entry[0], seq, ident))
            else:
                heapq.heappop(low)
                del counts[ident]
                return n
