"""The requests waiting for their first token at one endpoint, by prompt prefix (``sharedCopy``).

The cost scorer asks, per pick, how many of the endpoint's ``window`` most recently picked waiting
requests have this prompt's key at depth ``d`` (their prompt's first ``d`` blocks equal to this one's:
the keys are chained, so one key stands for the whole prefix in front of it). A scan compares one key
per request in the window: ~60 ns each, cheap while few wait (a live fleet: requests leave at their
first token), ~8 us at a full window of 128 (``kvgate bench picker``, where nothing finishes). While at
least ``INDEX_ON`` wait, an index answers instead from the requests sharing the prompt's first ``c``
blocks, ``c`` the largest power of two <= ``d`` (one dict lookup, then one comparison per such request;
none when ``c == d``), at O(log blocks) dict updates per request entering or leaving the window; below
``INDEX_OFF`` it is dropped (an insert and a removal cost ~3.5 us at 100-250-block prompts: the scan of
a short window is cheaper).

The window is kept exactly: ``_win`` holds the ``window`` most recently added live requests (oldest
first), ``_old`` the older ones. A request leaving the window's middle (its first token, its end) lets the
newest of ``_old`` back in at the window's old end, as a scan of the most recent ``window`` would see it.
Only the window's requests are indexed: memory is ``window`` x log2(blocks) entries per endpoint plus the
requests themselves (bounded by the scorer's ``MAX_WAITING_TRACKED``).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

U64 = (1 << 64) - 1  # keys are kept as 64-bit words
_AT = tuple((1 << j) - 1 for j in range(64))  # level j indexes the key at this position (depth 2**j)
# The index is built when the window reaches INDEX_ON requests and dropped below INDEX_OFF (apart, so a
# window at the edge does not build and drop it every pick).
INDEX_ON = 64
INDEX_OFF = 32


class WaitingIndex:
    __slots__ = ("_levels", "_old", "_win", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self._win: OrderedDict[str, array[int]] = OrderedDict()  # the most recent ``window``, oldest first
        self._old: dict[str, array[int]] = {}  # the older ones, oldest first
        # Level j: the key at depth 2**j -> the window's requests with it there (request id -> keys);
        # None while the window is short (``INDEX_ON``).
        self._levels: list[dict[int, dict[str, array[int]]]] | None = None

    def __len__(self) -> int:
        return len(self._win) + len(self._old)

    def values(self) -> list[array[int]]:
        """Every kept request's keys (the window's and the older ones)."""
        return [*self._old.values(), *self._win.values()]

    def add(self, rid: str, keys: array[int]) -> None:
        """``rid`` picked here (the newest); ``rid`` must not be in the index."""
        win = self._win
        win[rid] = keys
        levels = self._levels
        if levels is not None:
            self._index(rid, keys)
        if len(win) > self.window:
            orid, okeys = win.popitem(last=False)
            if levels is not None:
                self._unindex(orid, okeys)
            self._old[orid] = okeys  # (newer than every request already there)
        elif levels is None and len(win) >= INDEX_ON:
            self._levels = []
            for r, k in win.items():
                self._index(r, k)

    def remove(self, rid: str) -> None:
        win = self._win
        keys = win.pop(rid, None)
        if keys is None:
            del self._old[rid]
            return
        levels = self._levels
        if levels is not None:
            self._unindex(rid, keys)
        if self._old:
            orid, okeys = self._old.popitem()  # the newest of the older ones re-enters, at the old end
            win[orid] = okeys
            win.move_to_end(orid, last=False)
            if levels is not None:
                self._index(orid, okeys)
        elif levels is not None and len(win) < INDEX_OFF:
            self._levels = None

    def count(self, keys: Sequence[int], depth: int) -> int:
        """How many of the window's requests have ``keys[depth - 1]`` at ``depth`` (1-based, at most
        ``len(keys)``; ``keys`` compared as 64-bit words)."""
        i = depth - 1
        key = keys[i] & U64
        levels = self._levels
        if levels is None:
            return len([h for h in self._win.values() if len(h) > i and h[i] == key])
        j = depth.bit_length() - 1
        if j >= len(levels):
            return 0
        got = levels[j].get(keys[_AT[j]] & U64)
        if not got:
            return 0
        if 1 << j == depth:
            return len(got)
        return len([h for h in got.values() if len(h) > i and h[i] == key])

    def sharing(self, keys: Sequence[int], depth: int) -> list[str]:
        """As ``count``, those requests' ids."""
        i = depth - 1
        key = keys[i] & U64
        levels = self._levels
        if levels is None:
            return [rid for rid, h in self._win.items() if len(h) > i and h[i] == key]
        j = depth.bit_length() - 1
        if j >= len(levels):
            return []
        got = levels[j].get(keys[_AT[j]] & U64)
        if not got:
            return []
        return [rid for rid, h in got.items() if len(h) > i and h[i] == key]

    def _index(self, rid: str, keys: array[int]) -> None:
        levels = self._levels
        assert levels is not None
        n = len(keys).bit_length()  # the levels at depths 1, 2, 4, ... <= len(keys)
        while len(levels) < n:
            levels.append({})
        for lvl, i in zip(levels[:n], _AT, strict=False):
            k = keys[i]
            got = lvl.get(k)
            if got is None:
                lvl[k] = {rid: keys}
            else:
                got[rid] = keys

    def _unindex(self, rid: str, keys: array[int]) -> None:
        levels = self._levels
        assert levels is not None
        for lvl, i in zip(levels[: len(keys).bit_length()], _AT, strict=False):
            k = keys[i]
            got = lvl[k]
            del got[rid]
            if not got:
                del lvl[k]
