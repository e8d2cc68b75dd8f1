"""What a write evicts at a replica, priced in expected recompute: the cost scorer's ``evictionPrice``
(mt19, validated by mt19b: docs/benchmarks.md "Session 19").

A replica's KV cache is LRU: a prefix freed there survives until the blocks written there after it use
up the free blocks that were ahead of it. Writing ``u`` more tokens at a replica moves every cached
prefix's eviction ``u / w`` seconds earlier (``w``: the tokens written there per second), so a reusable
prefix ``j`` there (``s_j`` tokens, reused by ``n_j`` requests at once, next reuse a Poisson arrival at
rate ``lambda_j``, ``d_j`` tokens from the LRU's end) is lost by this write with probability

    P_j(u) = exp(-lambda_j * max(0, d_j - u) / w) - exp(-lambda_j * d_j / w)

and the write's price is ``sum_j s_j * n_j * T(s_j) * P_j(u)``: the prefill tokens its reuse computes
again, once for each request that waits on it, each waiter weighted by ``T(s_j) = F(L - s_j * spt) -
F(L)``, the rise in its chance to land in the slowest 10% when it waits ``s_j * spt`` longer (``F(x)``
the share of the last ``TAIL_N`` first-token times above ``x``, ``L`` their p90, ``spt`` the seconds per
uncached token learned from cold picks; ``T = 1`` until ``TAIL_MIN`` first-token times and ``spt`` are
known). A recompute that keeps its waiters under the p90 line costs nothing. Session contexts (a chat's
earlier turns, reused by one request after a think time) and tenant prefixes (reused by a burst of
``n`` requests, tens of seconds apart) are priced alike, each by its own size, waiters and reuse rate.

What a reusable prefix is, learned from this picker's own picks (no engine events):
- every pick registers its prompt (the key of its last hashed block) at the chosen replica;
- a pick that finds at least ``COLD_MATCH`` of its prompt cached there reuses the prefix keyed by its
  deepest matched block: when that key was a whole earlier prompt (a chat turn), the context grows into
  this prompt (its statistics carried to the new key); else it is a shared prefix (a burst), touched;
- touches less than ``EPISODE_S`` apart are one reuse (a burst), counted into ``n``; the time between
  reuses gives ``1 / lambda`` (a moving mean; before a key's first interval, the mean over all keys);
- only prefixes reused at least once (or shared within one episode) are priced; each is kept at one
  replica (its latest), and forgotten once the writes there since its touch exceed the free KV it had
  ahead of it then.

Who pays (``kvgate_cost.py``): every request, at each candidate, the price of writing its uncached
tokens and its ``max_tokens`` there, less the cheapest candidate's, at most ``missPenalty`` per token
written (``coldSpread``'s bound). A request whose prompt begins with a prefix reused by ``n`` requests
at once (a burst's first request, its tenant seen before) pays ``1 / n`` of it (the write serves them
all), and a request's own prefixes are never priced against it.

Bounded state: ``MAX_KEYS`` prefixes (statistics; the ones held at replicas are among them),
``MAX_ADDRESSES`` replicas (write counts and held prefixes; the longest unwritten is forgotten),
``MAX_PICKS`` picks waiting for a first token, ``TAIL_N`` first-token times, ``MAX_DEPTHS`` group depths.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint

EPISODE_S = 1.0  # touches of one prefix closer than this are one reuse (a burst's requests)
WRITE_WINDOW_S = 30.0  # write rates decay with this time constant
MAX_KEYS = 16384  # prefixes remembered (statistics), least recently touched forgotten
MAX_ADDRESSES = 4096  # replicas tracked (writes, held prefixes), least recently written forgotten
MAX_PICKS = 4096  # picks waiting for their first token (tail weighting), oldest forgotten
MAX_DEPTHS = 64  # depths (blocks) at which groups were seen
TAIL_N = 1024  # first-token times kept for the tail weight
TAIL_MIN = 64  # first-token times needed before the tail weight applies
SPT_MIN_UNCACHED = 1024  # uncached tokens a pick needs to teach the seconds per token
COLD_MATCH = 0.3  # a pick reuses a prefix when at least this share of its prompt was cached there
GAP_PRIOR_S = 30.0  # mean time between reuses before any is seen


class _Stats:
    __slots__ = ("gap", "hits", "n", "n_ep", "t_ep", "whole")

    def __init__(self, now: float, whole: bool) -> None:
        self.t_ep = now  # start of the current reuse episode
        self.n_ep = 1  # requests in it
        self.n = 0.0  # requests per reuse (the largest episode seen)
        self.gap = 0.0  # mean seconds between episodes (0: none seen yet)
        self.hits = 0  # episodes closed after a reuse
        self.whole = whole  # the key is a whole prompt's last block (a chat turn's context)

    def touch(self, now: float) -> float:
        """One more request on this prefix; returns a new reuse interval (0 if none)."""
        if now - self.t_ep <= EPISODE_S:
            self.n_ep += 1
            return 0.0
        gap = now - self.t_ep
        self.n = max(self.n, float(self.n_ep))
        self.gap = gap if not self.gap else self.gap + 0.3 * (gap - self.gap)
        self.hits += 1
        self.t_ep, self.n_ep = now, 1
        return gap


def _reused(st: _Stats) -> bool:
    """Reused at least once, or shared by several requests within one episode: priced."""
    return bool(st.hits) or max(st.n, float(st.n_ep) if st.n_ep > 1 else 0.0) >= 2.0


def loss_chance(lam: float, rate: float, d: float, u: float) -> float:
    """The chance that writing ``u`` tokens at a replica writing ``rate`` tokens/s evicts a prefix ``d``
    tokens from its LRU end before its next reuse (a Poisson arrival at ``lam``/s): ``exp(-lam (d - u) /
    rate) - exp(-lam d / rate)``, or ``1 - exp(-lam d / rate)`` when the write alone passes it."""
    x = lam / rate
    if d > u:
        return math.exp(-x * (d - u)) - math.exp(-x * d)
    return 1.0 - math.exp(-x * d)


class EvictionLedger:
    """Per replica: tokens written, and the reusable prefixes held, with their reuse statistics."""

    def __init__(self) -> None:
        self._keys: OrderedDict[int, _Stats] = OrderedDict()
        # address -> key -> [size tokens, writes there at touch, free KV tokens there at touch]
        self._held: dict[str, OrderedDict[int, list[float]]] = {}
        self._home: dict[int, str] = {}
        # address -> [cumulative tokens written, decayed write count, its time], least recently written first
        self._written: OrderedDict[str, list[float]] = OrderedDict()
        self.gap_mean = 0.0  # mean time between reuses over all prefixes
        # Depths (blocks) at which prefixes shared by several requests at once were seen.
        self._depths: OrderedDict[int, None] = OrderedDict()
        self._picks: OrderedDict[str, tuple[float, float]] = OrderedDict()  # request -> (pick time, uncached)
        self._ttfts: list[float] = []  # the last TAIL_N first-token times (ring)
        self._ttft_i = 0
        self._sorted: list[float] = []
        self._sorted_at = 0
        self.spt = 0.0  # seconds per uncached prompt token (cold picks' first-token time / uncached)

    # -- writes --------------------------------------------------------------------------------------
    def write(self, address: str, tokens: float, now: float) -> None:
        written = self._written
        w = written.get(address)
        if w is None:
            written[address] = [tokens, tokens, now]
            if len(written) > MAX_ADDRESSES:  # replicas gone: forget the longest unwritten
                gone, _ = written.popitem(last=False)
                for key in self._held.pop(gone, {}):
                    if self._home.get(key) == gone:
                        del self._home[key]
            return
        written.move_to_end(address)
        w[0] += tokens
        w[1] = w[1] * math.exp(-max(0.0, now - w[2]) / WRITE_WINDOW_S) + tokens
        w[2] = max(now, w[2])

    def _rate(self, address: str, now: float) -> tuple[float, float]:
        w = self._written.get(address)
        if w is None:
            return 0.0, 0.0
        return w[0], w[1] * math.exp(-max(0.0, now - w[2]) / WRITE_WINDOW_S) / WRITE_WINDOW_S

    # -- picks ---------------------------------------------------------------------------------------
    def picked(
        self,
        address: str,
        hashes: Sequence[int],
        matched_blocks: int,
        p: float,
        uncached: float,
        free: float,
        now: float,
    ) -> None:
        """A pick sent ``p`` prompt tokens (``uncached`` of them not cached there; ``hashes`` its blocks'
        keys, ``matched_blocks`` of them held there) to ``address``, which had ``free`` KV tokens free."""
        self.write(address, uncached, now)
        if not hashes:
            return
        keys = self._keys
        last = hashes[-1]
        if matched_blocks > 0 and p - uncached >= COLD_MATCH * p:
            km = hashes[matched_blocks - 1]
            st = keys.get(km)
            if st is None:  # a prefix shared with an earlier prompt that is not its whole (a burst)
                st = _Stats(now, whole=False)
                st.n_ep = 2  # the request that wrote it waits on it too
                keys[km] = st
            else:
                keys.move_to_end(km)
                gap = st.touch(now)
                if st.n_ep >= 2:
                    self._depths[matched_blocks] = None
                    self._depths.move_to_end(matched_blocks)
                    if len(self._depths) > MAX_DEPTHS:
                        self._depths.popitem(last=False)
                if gap:
                    self.gap_mean = gap if not self.gap_mean else self.gap_mean + 0.05 * (gap - self.gap_mean)
            if st.whole and last != km:
                # A chat turn: the context grows into this prompt, which its next turn reuses.
                new = keys.get(last)
                if new is None:
                    new = _Stats(now, whole=True)
                    keys[last] = new
                new.n, new.gap, new.hits = st.n, st.gap, st.hits
                self._drop(km)
                self._place(last, address, p, free, now)
            else:
                self._place(km, address, p - uncached, free, now)
        elif last not in keys:
            keys[last] = _Stats(now, whole=True)
            self._place(last, address, p, free, now)
        while len(keys) > MAX_KEYS:
            k, _ = keys.popitem(last=False)
            self._drop(k)

    def _drop(self, key: int) -> None:
        a = self._home.pop(key, None)
        if a is not None:
            held = self._held.get(a)
            if held is not None:
                held.pop(key, None)

    def _place(self, key: int, address: str, size: float, free: float, now: float) -> None:
        self._drop(key)
        st = self._keys.get(key)
        # Only prefixes reused before are priced, and a key's statistics change only when it is placed
        # again (a touch), so one not reused yet is not held: each pick's prices scan reused ones only.
        if st is None or not _reused(st) or address not in self._written:
            return
        self._home[key] = address
        written, _ = self._rate(address, now)
        self._held.setdefault(address, OrderedDict())[key] = [size, written, free]

    # -- first-token times (the tail weight) ---------------------------------------------------------
    def started(self, request_id: str, uncached: float, now: float) -> None:
        self._picks[request_id] = (now, uncached)
        if len(self._picks) > MAX_PICKS:
            self._picks.popitem(last=False)

    def first_token(self, request_id: str, now: float) -> None:
        got = self._picks.pop(request_id, None)
        if got is None:
            return
        t = now - got[0]
        if len(self._ttfts) < TAIL_N:
            self._ttfts.append(t)
        else:
            self._ttfts[self._ttft_i] = t
            self._ttft_i = (self._ttft_i + 1) % TAIL_N
        self._sorted_at += 1
        if got[1] >= SPT_MIN_UNCACHED:
            sample = t / got[1]
            self.spt = sample if not self.spt else self.spt + 0.05 * (sample - self.spt)

    def _above(self, x: float) -> float:
        srt = self._sorted
        if not srt:
            return 0.0
        return 1.0 - bisect_right(srt, x) / len(srt)

    def tail_weight(self, size: float) -> float:
        """``F(L - size * spt) - F(L)``: how much likelier a request becomes to land in the slowest 10% of
        recent first-token times when it waits for ``size`` tokens' prefill (1 until learned)."""
        if len(self._ttfts) < TAIL_MIN or not self.spt:
            return 1.0
        if self._sorted_at >= 32 or not self._sorted:
            self._sorted = sorted(self._ttfts)
            self._sorted_at = 0
        srt = self._sorted
        line = srt[int(0.9 * len(srt))]
        return max(0.0, self._above(line - size * self.spt) - self._above(line))

    # -- prices --------------------------------------------------------------------------------------
    def price(self, address: str, u: float, now: float, own: frozenset[int] = frozenset()) -> float:
        """Expected tokens recomputed (times their waiters, tail-weighted) because ``u`` tokens are
        written at ``address`` now; prefixes keyed in ``own`` (this request's) are not priced.

        (Hot: once per candidate per pick. ``loss_chance`` and ``tail_weight`` are inlined, with the
        same arithmetic in the same order; the tail's snapshot is taken at its first use, as there.)"""
        held = self._held.get(address)
        if not held:
            return 0.0
        written, rate = self._rate(address, now)
        rate = max(rate, 1.0)
        keys = self._keys
        prior = self.gap_mean or GAP_PRIOR_S
        exp = math.exp
        learned = len(self._ttfts) >= TAIL_MIN and self.spt
        srt: list[float] = []
        line = f_line = spt = 0.0
        m = 0
        total = 0.0
        gone: list[int] = []
        for key, (size, w_at, free) in held.items():
            d = free - (written - w_at)
            if d <= 0.0:
                gone.append(key)
                continue
            st = keys.get(key)
            if st is None:
                gone.append(key)
                continue
            if key in own:
                continue  # this request's own prefix: its write reuses it, evicts nothing of it
            n = st.n
            if st.n_ep > 1 and st.n_ep > n:
                n = float(st.n_ep)
            x = 1.0 / (st.gap or prior) / rate
            pr = exp(-x * (d - u)) - exp(-x * d) if d > u else 1.0 - exp(-x * d)
            if learned:
                if not m:
                    self.tail_weight(0.0)  # (refreshes the snapshot as the first weight would)
                    srt, spt = self._sorted, self.spt
                    m = len(srt)
                    line = srt[int(0.9 * m)]
                    f_line = 1.0 - bisect_right(srt, line) / m
                tw = 1.0 - bisect_right(srt, line - size * spt) / m - f_line
                w = (n if n > 1.0 else 1.0) * (tw if tw > 0.0 else 0.0)
            else:
                w = (n if n > 1.0 else 1.0) * 1.0
            total += size * w * pr
        for key in gone:
            del held[key]
            if self._home.get(key) == address:
                del self._home[key]
        return total

    def group_size(self, hashes: Sequence[int]) -> float:
        """Requests that reuse this prompt's prefix at once, if it begins with a known shared prefix."""
        best = 1.0
        keys = self._keys
        for depth in self._depths:
            if depth <= len(hashes):
                st = keys.get(hashes[depth - 1])
                if st is not None:
                    n = max(st.n, float(st.n_ep))
                    if n > best:
                        best = n
        return best

    def prices(
        self,
        endpoints: Sequence[Endpoint],
        uncached: Sequence[float],
        out_tokens: float,
        cap: float,
        now: float,
        hashes: Sequence[int] = (),
    ) -> list[float] | None:
        """Per candidate, the price of writing its ``uncached`` tokens and ``out_tokens`` there over the
        cheapest candidate's, shared by the request's group, at most ``cap`` per token written; None when a
        candidate's KV size is unknown."""
        raw: list[float] = []
        own = frozenset(hashes)
        for ep, unc in zip(endpoints, uncached, strict=True):
            met = ep.metrics
            if not met.num_gpu_blocks or not met.block_size:
                return None
            raw.append(self.price(ep.address, unc + out_tokens, now, own))
        low = min(raw)
        if hashes:
            g = self.group_size(hashes)
            if g > 1.0:
                raw = [low + (r - low) / g for r in raw]
        return [min(r - low, cap * (unc + out_tokens)) for r, unc in zip(raw, uncached, strict=True)]

    def sizes(self) -> dict[str, int]:
        """Entries per table (for tests of the bounds)."""
        return {
            "keys": len(self._keys),
            "held": sum(len(h) for h in self._held.values()),
            "held_addresses": len(self._held),
            "home": len(self._home),
            "written": len(self._written),
            "picks": len(self._picks),
            "depths": len(self._depths),
            "ttfts": len(self._ttfts),
        }

    @staticmethod
    def free_tokens(ep: Endpoint) -> float:
        met = ep.metrics
        if not met.num_gpu_blocks or not met.block_size:
            return 0.0
        return met.num_gpu_blocks * met.block_size * (1.0 - met.kv_cache_usage)
