"""Prompt prefixes that this gateway's requests in flight hold at each endpoint.

A model server's KV-cache use (vLLM's ``kv_cache_usage_perc``: 1 - free blocks / blocks, where a cached
block no running request references is free, evictable; SGLang's ``token_usage`` likewise) counts a
prompt block once however many running requests reference it, and counts a cached block again as soon
as a request references it. So a request takes new KV for its prompt except the blocks another running
request already holds there: a prefix-cache hit on an idle cached prefix takes its blocks off the free
list like a miss; a hit on a prefix a running request holds takes nothing. The utilization detector's
estimate of the KV this gateway's requests take after a page (``InFlight.sent_tokens``) uses this to
count a prompt block that several of its requests in flight share once (review s8-sat R3).

Keys: the prompt's chained block hashes (the approximate prefix index's, ``PrefixMatch.hashes``), one
every ``stride`` blocks, about ``KEY_TOKENS`` tokens apart. A key stands for the whole prefix up to its
block (a chained hash), so the keys a request in flight holds are closed under prefixes, and the leading
keys of a new request found here are the prefix it shares with one. The share is counted down to a
whole key: a request is charged at most ``KEY_TOKENS`` tokens (plus a partial block) more than it
shares. Bounded by its callers: one entry per key of each request they track.
"""

from __future__ import annotations

from collections.abc import Sequence

KEY_TOKENS = 256


def chain_keys(hashes: Sequence[int], block_tokens: int) -> tuple[tuple[int, ...], int]:
    """The keys of a prompt whose blocks (``block_tokens`` tokens each) hash to ``hashes``, and the tokens
    each key stands for."""
    stride = max(1, KEY_TOKENS // max(1, block_tokens))
    return tuple(hashes[stride - 1 :: stride]), stride * block_tokens


class HeldPrefixes:
    """Per endpoint: how many requests in flight hold each key."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[str, dict[int, int]] = {}

    def take(self, address: str, keys: Sequence[int]) -> int:
        """Hold ``keys`` at ``address`` for one more request; how many leading ``keys`` a request in
        flight there held already (one pass: this runs for every dispatch)."""
        held = self._at.get(address)
        if held is None:
            held = self._at[address] = {}
        shared, run = 0, True
        get = held.get
        for k in keys:
            n = get(k, 0)
            if run:
                if n:
                    shared += 1
                else:
                    run = False
            held[k] = n + 1
        return shared

    def release(self, address: str, keys: Sequence[int]) -> None:
        held = self._at.get(address)
        if held is None:
            return
        for k in keys:
            n = held.get(k, 0) - 1
            if n > 0:
                held[k] = n
            else:
                held.pop(k, None)
        if not held:
            del self._at[address]

    def __len__(self) -> int:
        return sum(len(h) for h in self._at.values())
