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

How a pick reads it (session 20, ep20): not prefix by prefix. Each replica keeps its held prefixes'
contributions summed on a grid of write positions (``_Grid``: ``GRID`` points per KV capacity, with the
sums' first two derivatives in the log of the write rate), updated when a prefix is placed, dropped or
passed by the LRU's end, and rebuilt (every prefix's weight and reuse rate taken again) when the
replica's write rate moves ``RATE_BAND`` times either way. A candidate's price is then its cached
slope times the tokens written (or two points read), corrected to the rate now: constant work per
candidate, whatever the prefixes held (the mt19 form summed them all at every candidate: up to 16,384
a pick). What it gives up: a prefix's weight (waiters, tail weight) and reuse rate are the ones of its
last placement or its replica's last rebuild, and ``S`` is read linearly between points; on the fleet
simulator's family c / 104 the cheapest candidate differs from the exact sum's in 1.2% of picks
(``scripts/eviction_price_agreement.py``). The exact sum stays as ``price_exact`` (``prices(...,
exact=True)``), the yardstick of the tests.

Bounded state: ``MAX_KEYS`` prefixes (statistics; the ones held at replicas are among them),
``MAX_ADDRESSES`` replicas (write counts and grids; the longest unwritten is forgotten), per grid at most
``MAX_POINTS + 1`` points and a heap of ``2 x held + 64`` eviction entries, ``MAX_PICKS`` picks waiting for
a first token, ``TAIL_N`` first-token times, ``MAX_DEPTHS`` group depths.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Collection, Sequence

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
GRID = 32  # a replica's grid points per its KV capacity (the step: capacity / GRID tokens)
MAX_POINTS = 4 * GRID  # points a grid may hold (one whose free KV outgrows it is rebuilt coarser)
RATE_BAND = 1.5  # a grid is rebuilt when its replica's write rate moves past this factor either way


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


def _chance(x: float, d: float, u: float) -> float:
    """``loss_chance`` with ``x = lam / rate`` (0 for a prefix already passed, ``d <= 0``)."""
    if d <= 0.0:
        return 0.0
    if d > u:
        return math.exp(-x * (d - u)) - math.exp(-x * d)
    return 1.0 - math.exp(-x * d)


def _lr(g: _Grid, now: float) -> float:
    """``ln(rate now / g.rate)``: the log of a decaying rate falls linearly in time (clamped at 1/s)."""
    lr = g.lnr - max(0.0, now - g.w_at) / WRITE_WINDOW_S
    return lr if lr > g.floor else g.floor


class _Grid:
    """One replica's priced prefixes, summed on a fixed grid of write positions (session 20, ep20).

    Position ``y`` counts the tokens written at the replica; it has written ``w`` so far, and a prefix
    ``d`` tokens from the LRU's end is evicted when ``y`` passes ``D = w + d``. With ``v_j(y) = x_j (D_j -
    y)``, ``x_j = lambda_j / rate``, each prefix adds ``T_j(y) = -c_j (1 - exp(-v_j))`` for ``y < D_j`` (0
    beyond) to ``S(y)``, ``c_j`` its tokens times its weighted waiters, so that a write of ``u`` tokens
    costs ``S(w + u) - S(w) = sum_j c_j P_j(u)``: the exact price. The replica's write rate moves between
    writes (it decays); ``T_j`` is a smooth function of ``L = ln(rate / rate0)``, so ``S`` is kept with its
    first two derivatives in ``L`` (``sum_j c_j v_j e^-v_j`` and ``sum_j c_j v_j (v_j - 1) e^-v_j``) and a
    price is their second-order expansion at the rate now: exact at ``rate0``, within ``L^3/6`` of the
    third derivative elsewhere. The grid is rebuilt at the rate then (and every prefix's weight and reuse
    rate then) once ``|L|`` passes ``ln RATE_BAND``.

    All three are kept at the points ``m * step`` (``step`` = the KV capacity / ``GRID``) from the one at
    or below ``w`` to the last ``D``, and read between them linearly; the slopes of the cell holding ``w``
    are kept too, so a write that stays in that cell is priced by a few multiplications. A prefix placed
    or dropped updates the points below its ``D`` (at most ``MAX_POINTS``); a write drops the points the
    LRU's end has passed."""

    __slots__ = (
        "due", "floor", "held", "lnr", "m0", "rate", "room", "s0", "s1", "s2", "stale_at", "step",
        "sw0", "sw1", "sw2", "v0", "v1", "v2", "w", "w_at",
    )  # fmt: skip

    def __init__(self, step: float, rate: float, w: float) -> None:
        self.step = step
        self.rate = rate  # rate0: the write rate the grid was built at (tokens per second)
        self.lnr = 0.0  # ln(rate / rate0) at the last write
        self.floor = -math.log(rate)  # the least lnr (the rate is clamped at 1 token/s, as the exact form's)
        self.w = w  # tokens written at the replica (the ledger's count)
        self.m0 = int(w / step)  # the first point's index
        self.v0: list[float] = []  # S at the points
        self.v1: list[float] = []  # dS / dL
        self.v2: list[float] = []  # d2S / dL2
        # key -> [D, size, x, c] (c: the tokens times the weighted waiters it was added with)
        self.held: OrderedDict[int, list[float]] = OrderedDict()
        self.due: list[tuple[float, int]] = []  # (D, key) min-heap: the held prefixes by eviction
        self.sw0 = self.sw1 = self.sw2 = 0.0  # S and its derivatives at w
        self.s0 = self.s1 = self.s2 = 0.0  # their slopes in the cell holding w
        self.room = math.inf  # tokens from w to that cell's end
        self.stale_at = math.inf  # when the decaying rate, unwritten, leaves the band
        self.w_at = 0.0  # the time of lnr

    def add(self, d_end: float, x: float, c: float) -> None:
        """Adds the prefix's ``T`` below ``d_end`` (``c < 0``: takes it away)."""
        step, v0, v1, v2 = self.step, self.v0, self.v1, self.v2
        k = math.ceil(d_end / step) - self.m0  # the first point at or past d_end
        if k <= 0 or not c:
            return
        if k >= len(v0):
            more = [0.0] * (k + 1 - len(v0))
            v0.extend(more)
            v1.extend(more)
            v2.extend(more)
        v = x * (d_end - (self.m0 + k - 1) * step)
        dv = x * step
        e = math.exp(-v)
        q = math.exp(-dv)
        for i in range(k - 1, -1, -1):
            ce = c * e
            v0[i] -= c - ce
            cve = ce * v
            v1[i] += cve
            v2[i] += cve * (v - 1.0)
            e *= q
            v += dv

    def advance(self, w: float) -> None:
        """The replica has written ``w`` tokens: drop the points the LRU's end has passed."""
        self.w = w
        k = int(w / self.step) - self.m0
        if k > 0:
            del self.v0[:k]
            del self.v1[:k]
            del self.v2[:k]
            self.m0 += k
        self.cache()

    def cache(self) -> None:
        v0, step, w = self.v0, self.step, self.w
        t = w / step - self.m0
        i = int(t)
        if i + 1 >= len(v0):
            self.sw0 = self.sw1 = self.sw2 = self.s0 = self.s1 = self.s2 = 0.0
            self.room = math.inf
            return
        f = w - (self.m0 + i) * step
        a = v0[i]
        self.s0 = (v0[i + 1] - a) / step
        self.sw0 = a + self.s0 * f
        a = self.v1[i]
        self.s1 = (self.v1[i + 1] - a) / step
        self.sw1 = a + self.s1 * f
        a = self.v2[i]
        self.s2 = (self.v2[i + 1] - a) / step
        self.sw2 = a + self.s2 * f
        self.room = (self.m0 + i + 1) * step - w

    def far(self, u: float, lr: float) -> float:
        """``price(u)`` for a write past the cell holding ``w``."""
        v0 = self.v0
        t = (self.w + u) / self.step - self.m0
        i = int(t)
        if i + 1 >= len(v0):
            a0 = a1 = a2 = 0.0
        else:
            f = t - i
            a = v0[i]
            a0 = a + (v0[i + 1] - a) * f
            a = self.v1[i]
            a1 = a + (self.v1[i + 1] - a) * f
            a = self.v2[i]
            a2 = a + (self.v2[i + 1] - a) * f
        return (a0 - self.sw0) + lr * ((a1 - self.sw1) + 0.5 * lr * (a2 - self.sw2))

    def price(self, u: float, lr: float) -> float:
        """``S(w + u) - S(w)`` at ``L = lr``: the price of writing ``u`` tokens here now."""
        if u <= self.room:
            return (self.s0 + lr * (self.s1 + 0.5 * lr * self.s2)) * u
        return self.far(u, lr)

    def part(self, rec: list[float], u: float, lr: float) -> float:
        """One held prefix's share of ``price(u, lr)``, read off the grid as ``price`` reads it (so that
        taking it away leaves the others' prices)."""
        a0, a1, a2 = self._one(rec, self.w + u)
        b0, b1, b2 = self._one(rec, self.w)
        return (a0 - b0) + lr * ((a1 - b1) + 0.5 * lr * (a2 - b2))

    def _one(self, rec: list[float], y: float) -> tuple[float, float, float]:
        d_end, x, c = rec[0], rec[2], rec[3]
        step = self.step
        t = y / step - self.m0
        i = int(t)
        if i + 1 >= len(self.v0):
            return 0.0, 0.0, 0.0
        out = []
        for m in (self.m0 + i, self.m0 + i + 1):
            if m * step < d_end:
                v = x * (d_end - m * step)
                ce = c * math.exp(-v)
                out.append((ce - c, ce * v, ce * v * (v - 1.0)))
            else:
                out.append((0.0, 0.0, 0.0))
        (a0, a1, a2), (b0, b1, b2) = out
        f = t - i
        return a0 + (b0 - a0) * f, a1 + (b1 - a1) * f, a2 + (b2 - a2) * f


class EvictionLedger:
    """Per replica: tokens written, and the reusable prefixes held, with their reuse statistics."""

    def __init__(self) -> None:
        self._keys: OrderedDict[int, _Stats] = OrderedDict()
        # address -> the prefixes held there, summed on a grid of write positions
        self._held: dict[str, _Grid] = {}
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
        self._tailed = False  # the tail weight has applied (its first rebuild of every grid done)
        self.rebuilds = 0  # grids rebuilt (rate moved out of its band): for tests and diagnostics

    # -- writes --------------------------------------------------------------------------------------
    def write(self, address: str, tokens: float, now: float) -> None:
        written = self._written
        w = written.get(address)
        if w is None:
            written[address] = [tokens, tokens, now]
            if len(written) > MAX_ADDRESSES:  # replicas gone: forget the longest unwritten
                gone, _ = written.popitem(last=False)
                g = self._held.pop(gone, None)
                if g is not None:
                    for key in g.held:
                        if self._home.get(key) == gone:
                            del self._home[key]
            return
        written.move_to_end(address)
        w[0] += tokens
        w[1] = w[1] * math.exp(-max(0.0, now - w[2]) / WRITE_WINDOW_S) + tokens
        w[2] = max(now, w[2])
        g = self._held.get(address)
        if g is not None:
            g.advance(w[0])
            if g.due and g.due[0][0] <= w[0]:
                self._expire(address, g)
            rate = max(w[1] / WRITE_WINDOW_S, 1.0)
            if rate > g.rate * RATE_BAND or rate * RATE_BAND < g.rate:
                self._rebuild(g, rate)
            self._stale_at(g, rate, w[2])

    @staticmethod
    def _stale_at(g: _Grid, rate: float, t: float) -> None:
        """``g.lnr`` for ``rate`` at ``t``, and when ``rate``, decaying with no write, leaves the band."""
        g.lnr = math.log(rate / g.rate)
        low = g.rate / RATE_BAND
        g.stale_at = t + WRITE_WINDOW_S * math.log(rate / low) if low > 1.0 else math.inf
        g.w_at = t

    def _refresh(self, address: str, g: _Grid, now: float) -> None:
        """``g``'s replica has not been written for so long that its rate left the band: rebuilt."""
        _, rate = self._rate(address, now)
        rate = max(rate, 1.0)
        self._rebuild(g, rate)
        self._stale_at(g, rate, now)

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
        capacity: float = 0.0,
    ) -> None:
        """A pick sent ``p`` prompt tokens (``uncached`` of them not cached there; ``hashes`` its blocks'
        keys, ``matched_blocks`` of them held there) to ``address``, which had ``free`` KV tokens free
        (``capacity`` in all, 0 if unknown: sets the replica's grid step at its first prefix)."""
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
                self._place(last, address, p, free, now, capacity)
            else:
                self._place(km, address, p - uncached, free, now, capacity)
        elif last not in keys:
            keys[last] = _Stats(now, whole=True)
            self._place(last, address, p, free, now, capacity)
        while len(keys) > MAX_KEYS:
            k, _ = keys.popitem(last=False)
            self._drop(k)

    def _drop(self, key: int) -> None:
        a = self._home.pop(key, None)
        if a is not None:
            g = self._held.get(a)
            if g is not None:
                rec = g.held.pop(key, None)
                if rec is not None:
                    g.add(rec[0], rec[2], -rec[3])
                    g.cache()

    def _weight(self, st: _Stats, size: float) -> tuple[float, float]:
        """A prefix's tokens times its weighted waiters, and its reuse rate (per second), now."""
        n = st.n
        if st.n_ep > 1 and st.n_ep > n:
            n = float(st.n_ep)
        tw = self.tail_weight(size) if len(self._ttfts) >= TAIL_MIN and self.spt else 1.0
        return size * (n if n > 1.0 else 1.0) * tw, 1.0 / (st.gap or self.gap_mean or GAP_PRIOR_S)

    def _place(
        self, key: int, address: str, size: float, free: float, now: float, capacity: float = 0.0
    ) -> None:
        self._drop(key)
        st = self._keys.get(key)
        # Only prefixes reused before are priced, and a key's statistics change only when it is placed
        # again (a touch), so one not reused yet is not held: each pick's prices sum reused ones only.
        if st is None or not _reused(st) or address not in self._written:
            return
        written, rate = self._rate(address, now)
        g = self._held.get(address)
        if g is None:
            span = capacity if capacity > 0.0 else free
            g = self._held[address] = _Grid(max(span, 1.0) / GRID, max(rate, 1.0), written)
            self._stale_at(g, g.rate, now)
        self._home[key] = address
        d_end = written + free
        c, lam = self._weight(st, size)
        x = lam / g.rate
        g.held[key] = [d_end, size, x, c]
        heapq.heappush(g.due, (d_end, key))
        if len(g.due) > 2 * len(g.held) + 64:  # entries of prefixes dropped or placed again since
            g.due = [(r[0], k) for k, r in g.held.items()]
            heapq.heapify(g.due)
        if d_end > (g.m0 + MAX_POINTS) * g.step:  # more free than the grid was sized for: a coarser one
            g.step = (d_end - g.w) / GRID
            self._rebuild(g, g.rate)
            return
        g.add(d_end, x, c)
        g.cache()

    def _expire(self, address: str, g: _Grid) -> None:
        """Forgets the prefixes the LRU's end has passed at ``address`` (their points are gone already)."""
        due, held, w = g.due, g.held, g.w
        while due and due[0][0] <= w:
            d_end, key = heapq.heappop(due)
            rec = held.get(key)
            if rec is not None and rec[0] == d_end:
                del held[key]
                # Its points past ``w`` are gone, but the cell holding ``w`` still carries it (review
                # s20-fc L1: a replica holding nothing was priced): take that away too.
                g.add(d_end, rec[2], -rec[3])
                if self._home.get(key) == address:
                    del self._home[key]
        g.cache()

    def _rebuild(self, g: _Grid, rate: float) -> None:
        """Sums ``g``'s prefixes again at the replica's write rate ``rate``, each with its weight and reuse
        rate now."""
        self.rebuilds += 1
        g.rate = rate
        g.floor = -math.log(rate)
        g.m0 = int(g.w / g.step)
        g.v0, g.v1, g.v2 = [], [], []
        keys = self._keys
        for key in [k for k in g.held if k not in keys]:  # (none: a key forgotten is dropped first)
            del g.held[key]
            self._home.pop(key, None)
        for key, rec in g.held.items():
            c, lam = self._weight(keys[key], rec[1])
            rec[2], rec[3] = lam / rate, c
            g.add(rec[0], rec[2], c)
        g.cache()

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
        if not self._tailed and self.spt and len(self._ttfts) >= TAIL_MIN:
            # The tail weight applies from now on: every prefix held was weighted 1 a waiter until now.
            self._tailed = True
            for a, g in self._held.items():
                _, rate = self._rate(a, now)
                self._rebuild(g, max(rate, 1.0))
                self._stale_at(g, g.rate, now)

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
    def price(self, address: str, u: float, now: float, own: Collection[int] = ()) -> float:
        """Expected tokens recomputed (times their waiters, tail-weighted) because ``u`` tokens are
        written at ``address``; prefixes keyed in ``own`` (this request's) are not priced. From the
        replica's grid: constant work, whatever the prefixes held (``now`` is not read: the rate is the
        grid's)."""
        g = self._held.get(address)
        if g is None:
            return 0.0
        if now > g.stale_at:
            self._refresh(address, g, now)
        lr = _lr(g, now)
        total = g.price(u, lr)
        for key in own:
            rec = g.held.get(key)
            if rec is not None:
                total -= g.part(rec, u, lr)
        return total if total > 1e-9 else 0.0

    def price_exact(self, address: str, u: float, now: float, own: Collection[int] = ()) -> float:
        """The price ``price`` approximates, summed prefix by prefix with the replica's write rate at
        ``now`` and each prefix's weight and reuse rate now (mt19's form, validated by mt19b): the
        yardstick of the grid's tests and of ``scripts/eviction_price_agreement.py``. No state changes."""
        g = self._held.get(address)
        if g is None:
            return 0.0
        written, rate = self._rate(address, now)
        rate = max(rate, 1.0)
        keys = self._keys
        total = 0.0
        for key, (d_end, size, _x, _c) in g.held.items():
            d = d_end - written
            st = keys.get(key)
            if d <= 0.0 or st is None or key in own:
                continue
            c, lam = self._weight(st, size)
            total += c * _chance(lam / rate, d, u)
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
        *,
        exact: bool = False,
    ) -> list[float] | None:
        """Per candidate, the price of writing its ``uncached`` tokens and ``out_tokens`` there over the
        cheapest candidate's, shared by the request's group, at most ``cap`` per token written; None when a
        candidate's KV size is unknown."""
        if exact:  # the yardstick (``price_exact``): tests and scripts/eviction_price_agreement.py
            own_set = frozenset(hashes)
            for ep in endpoints:
                if not ep.metrics.num_gpu_blocks or not ep.metrics.block_size:
                    return None
            ex = [
                self.price_exact(ep.address, unc + out_tokens, now, own_set)
                for ep, unc in zip(endpoints, uncached, strict=True)
            ]
            return self._share(ex, uncached, out_tokens, cap, hashes)
        raw: list[float] = []
        grids = self._held
        for ep, unc in zip(endpoints, uncached, strict=True):
            met = ep.metrics
            if not met.num_gpu_blocks or not met.block_size:
                return None
            g = grids.get(ep.address)
            if g is None:
                raw.append(0.0)
                continue
            if now > g.stale_at:
                self._refresh(ep.address, g, now)
            u = unc + out_tokens
            lr = g.lnr  # (``_lr`` and ``_Grid.price`` inlined)
            if now > g.w_at:
                lr -= (now - g.w_at) / WRITE_WINDOW_S
                if lr < g.floor:
                    lr = g.floor
            raw.append((g.s0 + lr * (g.s1 + 0.5 * lr * g.s2)) * u if u <= g.room else g.far(u, lr))
        if hashes and self._home:
            own = self._home.keys() & hashes  # this request's own prefixes held somewhere: not priced
            if own:
                where = {ep.address: i for i, ep in enumerate(endpoints)}
                for key in own:
                    i = where.get(self._home[key], -1)
                    if i >= 0:
                        g = grids[self._home[key]]
                        r = raw[i] - g.part(g.held[key], uncached[i] + out_tokens, _lr(g, now))
                        raw[i] = r if r > 1e-9 else 0.0
        return self._share(raw, uncached, out_tokens, cap, hashes)

    def _share(
        self,
        raw: list[float],
        uncached: Sequence[float],
        out_tokens: float,
        cap: float,
        hashes: Sequence[int],
    ) -> list[float]:
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
            "held": sum(len(g.held) for g in self._held.values()),
            "points": max((len(g.v0) for g in self._held.values()), default=0),
            "due": max((len(g.due) for g in self._held.values()), default=0),
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
