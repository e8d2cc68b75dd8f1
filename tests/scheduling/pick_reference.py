"""A reference copy of the picker's code as it was before session 10's CPU cuts (main at 6a5bcb1), for
``test_pick_equivalence.py``: a Director patched with these decides as the old code did, so the test can
run the old and the new code side by side on the same generated trace and require the same picks.

Copied verbatim (dedented to module functions taking ``self``; names they use imported below), only
the parts the cuts changed: ``Director.candidates`` / ``pick`` / ``_pick`` / ``on_dispatched`` /
``on_first_token`` / ``on_finished`` / ``on_usage`` / ``_release``, ``SchedulerProfile.run``,
``PrefixCacheScorer.prepare``, ``PrefixIndex.add`` / ``match``, ``datalayer.health.gate``,
``scheduling.prefix.block_hashes``, and the cost scorer's ``on_picked`` and ``_waiting_on_prefix``. Do
not "fix" or speed up anything here: it is the yardstick.

Flow control's change to ``on_dispatched`` (5169afe, after 6a5bcb1) is taken over here: this copy
holds the code the CPU cuts replaced, other changes to the same functions follow main.

This copy is mirrored by hand: edits here follow main (as 304e2c9 took over 5169afe's), and then this
test proves only that the copy and the new code decide alike, not that the code decides as it did
before the cuts. The authority for equivalence with the pre-session code is ``scripts/gateway_path_cost.py
--picks --base-src <src of a 6a5bcb1 worktree> [--policy NAME]``: it runs the same trace
(``kvgate.bench.picktrace``) on both trees' unmodified code and fails (PICKS DIFFER) unless their picks
are equal. It covers the named policies only, not the feedback and SLO-admission configs of the test.

The cost scorer's ``evictionPrice`` hook in ``on_picked`` (mt19b; opt-in, off in the named policies) is
taken over from main as it is, like 5169afe's; so is its ``coldSpread`` reuse count (on in the kvgate
policy since fam31: without it this copy never learns a reuse rate and prices no cold request).

The cost scorer's ``costs`` is not copied: its one cut skips ``_waiting_on_prefix`` where that returns
0, a premise the test checks directly, so this copy does not hold the scorer's pricing still. When the
cost scorer's semantics change on purpose, change its two functions here alike: the copy is there to
check the CPU cuts, not to stop pricing changes.
"""

from __future__ import annotations

import logging
import math
import types
from array import array
from collections.abc import Sequence
from itertools import islice
from typing import Any

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.health import HealthPolicy
from kvgate.datalayer.prefixrefs import chain_keys
from kvgate.flowcontrol.controller import flow_of
from kvgate.flowcontrol.sloadmission import PredictedSLOMissError
from kvgate.requestcontrol import director as _director
from kvgate.requestcontrol.director import MAX_TRACKED, POOL_METRICS_EVERY_S, Director, _Track
from kvgate.scheduling import metrics
from kvgate.scheduling.framework import (
    EXPLAIN_EXTRAS,
    CycleState,
    PostPick,
    cache_expectation,
    publish_cache_expectation,
)
from kvgate.scheduling.plugins.kvgate_cost import (
    _U64,
    MAX_ENDPOINTS_TRACKED,
    MAX_WAITING_TRACKED,
    RATE_WINDOW_S,
    SPT_MIN_TOKENS,
    WAITING_SCAN,
    KVGateCostScorer,
)
from kvgate.scheduling.plugins.prefix_cache import CYCLE_KEY, PrefixCacheScorer, PrefixMatch, prefix_match
from kvgate.scheduling.prefix import CHARS_PER_TOKEN, MAX_PREFIX_BLOCKS, _h64, _pack
from kvgate.scheduling.profile import SchedulerProfile
from kvgate.scheduling.types import (
    InferenceRequest,
    NoCapacityError,
    PickResult,
    PredictedMissError,
    SchedulingError,
    ShedError,
    Usage,
    prompt_tokens,
)

log = _director.log


def candidates(self, req: InferenceRequest, now: float | None = None) -> Sequence[Endpoint]:
    if self._candidates_version != self.store.version:
        self._candidates = self.store.all()
        self._candidates_version = self.store.version
    eps: Sequence[Endpoint] = self._candidates
    if req.subset is not None:
        subset = req.subset
        eps = [ep for ep in eps if ep.address in subset]
        if not eps:
            raise NoCapacityError("no endpoint in the request's subset hint is known to the picker")
    healthy = gate(eps, self.clock() if now is None else now, self.health)
    if not healthy:
        raise NoCapacityError("no ready endpoint")
    return healthy


def pick(
    self,
    req: InferenceRequest,
    explain: bool = False,
    *,
    judge: bool = False,
    only: Sequence[Endpoint] | None = None,
) -> PickResult:
    """``judge``: flow control's pick as the request leaves the queue, where ``sloAdmission`` judges
    it; a front door's own pick (a retry after a failed attempt: admitted already) is never judged.
    ``only``: the candidates to choose from first (a subset of ``candidates(req)``; None: all of
    them); when the profile keeps none of them (a filter: a subset, a header naming an endpoint), it
    chooses among all, as without ``only``."""
    t0 = self.timer()
    try:
        try:
            result = self._pick(req, explain, judge, only)
        except PredictedMissError:
            raise  # (judged on what it may be sent to now: held or shed as such)
        except SchedulingError:
            if only is None:
                raise
            result = self._pick(req, explain, judge, None)
    except PredictedSLOMissError:
        raise  # (sloAdmission: flow control counts it, held or shed; a hold is no scheduler error)
    except SchedulingError as e:
        metrics.scheduler_error(e.code)
        raise
    except Exception:  # a plugin's bug: its caller answers 500; counted as such, not only logged
        metrics.scheduler_error("internal_error")
        raise
    metrics.SCHEDULER_E2E.observe(self.timer() - t0)
    metrics.PICKS.inc(result.endpoints[0].address)
    return result


def _pick(
    self, req: InferenceRequest, explain: bool, judge: bool, only: Sequence[Endpoint] | None = None
) -> PickResult:
    now = self.clock()
    if self._pool_metrics_at is None or now - self._pool_metrics_at >= POOL_METRICS_EVERY_S:
        self._pool_metrics_at = now
        self.update_pool_metrics()
    cands = self.candidates(req, now) if only is None else only
    if req.sheddable and self.detector is not None and self.detector.saturated(cands, now):
        metrics.SHED.inc()
        raise ShedError("pool saturated: sheddable request rejected")
    cycle = CycleState(req, now, explain or log.isEnabledFor(logging.DEBUG))
    chosen: list[Endpoint] = []
    first = ""
    names = list(self.handler.select(cycle, self._profile_names))
    gate = self.slo_admission
    prepared = ""  # the profile whose producers the gate already ran on this cycle
    if judge and gate is not None and req.sheddable and names:
        # Judged before any profile's choice has effects: its producers first (the expected cache
        # hit is a feature of the prediction); the profile's run does not repeat them.
        prepared = names[0]
        for producer in self.profiles[prepared].producers:
            producer.prepare(cycle, cands)
        gate.check(cycle, cands)  # PredictedSLOMissError: held or shed by flow control
    for name in names:
        picked = self.profiles[name].run(cycle, cands, prepared=name == prepared)
        if not chosen:
            chosen, first = picked, name
    if gate is not None and chosen:
        oracle = gate.oracle
        ran = (self.profiles[n].post_pick for n in names)
        if isinstance(oracle, PostPick) and all(oracle not in hooks for hooks in ran):
            oracle.on_picked(cycle, chosen[0])  # (the model learns from every pick)
    expected = cache_expectation(cycle)
    if expected is not None:
        # Remember the expected cache hit per chosen endpoint for in-flight accounting at dispatch;
        # without it every dispatch would count its whole prompt as pending prefill on the holder.
        keys = None
        m = prefix_match(cycle) if self._count_held else None
        if m is not None and m.hashes:
            # (``m.data``: a prompt longer than the index's window, keyed on past it)
            block = m.chunk // (4 if m.by_ids else CHARS_PER_TOKEN)
            keys = chain_keys(m.hashes, block, m.data, m.chunk)
        self._remember(
            req.request_id, {ep.address: expected.uncached_fraction(ep.address) for ep in chosen}, keys
        )
    explanation: dict[str, Any] = {}
    if cycle.explain:
        explanation = {
            "request_id": req.request_id,
            "policy": self.name,
            "profiles": cycle.data.get("explanation", {}),
            "winner": chosen[0].address,
        }
        explanation.update(cycle.data.get(EXPLAIN_EXTRAS, {}))
        log.debug("pick %s", explanation)
    return PickResult(chosen, first, explanation)


def on_dispatched(self, req: InferenceRequest, endpoint: Endpoint) -> None:
    key = (req.request_id, endpoint.address)
    if key in self._tracks:
        return
    p = prompt_tokens(req.prompt_tokens, req.prompt_text, req.token_ids)
    picked = self._picked.get(req.request_id)
    frac = picked[0].get(endpoint.address, 1.0) if picked is not None else 1.0
    track = _Track(int(p * frac), req.max_tokens if req.max_tokens else int(self.mean_decode))
    track.sent_at = self.clock()
    # The KV it takes there (the utilization detector's estimate): every prompt token (a hit on an
    # idle cached prefix takes those blocks back into use) except the prefix a request of its own in
    # flight there already holds (one copy of a block however many requests share it), and the
    # output it can have decoded while that estimate is read (``_kv_horizon`` after a page).
    shared, out = 0, track.decode
    if picked is not None and picked[1] is not None:
        keys = track.keys = picked[1]
        shared = min(p, keys.tokens(self._held.take(endpoint.address, keys.keys)))
    if self._kv_horizon:
        out = min(out, self._decodable(endpoint, track.sent_at))
    track.sent = p - shared + out
    self._tracks[key] = track
    if len(self._tracks) > MAX_TRACKED:  # a leaked request: forget the oldest, undo its counts
        (_rid, addr), old = self._tracks.popitem(last=False)
        ep = self.store.get(addr)
        self._release(addr, ep, old)
        self._flow_ended(old)  # (its unused arguments dropped on main after 5169afe)
    if self.flow is not None:
        track.flow = flow_of(req)
        # (flow control's own change at 5169afe, fc10: not one of the CPU cuts)
        self.flow.ctl.started(track.flow, req, track.sent_at)
    inf = endpoint.inflight
    inf.requests += 1
    inf.calls += 1
    inf.pending_prefill_tokens += track.prefill
    inf.pending_decode_tokens += track.decode
    inf.sent_tokens += track.sent
    inf.unstarted_tokens += track.sent


def on_first_token(self, req: InferenceRequest, endpoint: Endpoint, learn: bool = True) -> None:
    """``learn=False``: a first token whose time says nothing about prefill (a non-streamed reply,
    seen with its last token; an error reply): the accounting moves on, the latency models
    (``ResponseObserver`` plugins) learn nothing from it."""
    track = self._tracks.get((req.request_id, endpoint.address))
    if track is None or track.first_token:
        return
    track.first_token = True
    track.first_at = self.clock()
    if track.stop is not None:
        track.stop = None
        self._victims.pop((req.request_id, endpoint.address), None)
    track.batch_at_first = self._batch(endpoint, track.first_at) + 1  # this one starts decoding now
    if learn:
        for obs in self._observers:
            obs.on_first_token(req, endpoint, track.first_at)
    inf = endpoint.inflight
    inf.pending_prefill_tokens = max(0, inf.pending_prefill_tokens - track.prefill)
    inf.unstarted_tokens = max(0, inf.unstarted_tokens - track.sent)
    inf.decoding += 1
    inf.started += 1
    if self.flow is not None and learn:  # (not a TTFT either for the flow's TTFT targets)
        if track.flow is not None and req.arrival_time:  # (flowControl.fairShareTTFTTarget)
            self.flow.ctl.observe_first_token(
                req, track.first_at - req.arrival_time, track.first_at - track.sent_at
            )
        self.flow.ctl.observe_service_ttft(track.first_at - track.sent_at)  # (slo-feasible)
    if self.flow is not None or self.predecessor is not None:
        self._notify()


def _release(self, address: str, endpoint: Endpoint | None, track: _Track) -> None:
    if track.keys is not None:
        self._held.release(address, track.keys.keys)
    if endpoint is None:
        return
    inf = endpoint.inflight
    inf.requests = max(0, inf.requests - 1)
    inf.calls = max(0, inf.calls - 1)
    if track.first_token:
        inf.decoding = max(0, inf.decoding - 1)
    else:
        inf.pending_prefill_tokens = max(0, inf.pending_prefill_tokens - track.prefill)
        inf.unstarted_tokens = max(0, inf.unstarted_tokens - track.sent)
    inf.pending_decode_tokens = max(0, inf.pending_decode_tokens - track.decode)


def on_finished(self, req: InferenceRequest, endpoint: Endpoint, usage: Usage | None, ok: bool) -> None:
    self._picked.pop(req.request_id, None)
    track = self._tracks.pop((req.request_id, endpoint.address), None)
    if track is None:
        return
    batch_at_last = self._batch(endpoint, self.clock()) if track.first_token else 0.0
    if track.stop is not None:
        self._victims.pop((req.request_id, endpoint.address), None)
    self._release(endpoint.address, endpoint, track)
    self._flow_ended(track)  # (as above)
    if self.flow is not None or self.predecessor is not None:
        self._notify()
    if self._observers:
        now, out = self.clock(), usage.completion_tokens if usage is not None else 0
        if ok and usage is not None:
            self.on_usage(req, endpoint, usage)
        for obs in self._observers:
            obs.on_finished(req, endpoint, out, ok, now)
    if ok and usage is not None and usage.completion_tokens > 0:
        if track.first_token:
            self.speed.observe(
                endpoint,
                self.clock() - track.first_at,
                usage.completion_tokens,
                (track.batch_at_first + batch_at_last) / 2,
            )
        if not req.max_tokens:
            self.mean_decode += 0.05 * (usage.completion_tokens - self.mean_decode)


def _remember(self, request_id: str, uncached: dict[str, float], keys: Any = None) -> None:
    # (the Director's own, inlined in its ``_pick`` by session 23's accounting cut, cpu23)
    self._picked[request_id] = (uncached, keys)
    if len(self._picked) > MAX_TRACKED:
        self._picked.popitem(last=False)


def on_usage(self, req: InferenceRequest, endpoint: Endpoint, usage: Usage) -> None:
    """The engine's usage for a request as soon as it is known (the simulator knows the cached tokens
    at prefill; a door passes its final usage through ``on_finished``). Observers take the first
    they are given (e.g. the engine's cached tokens correct the prefix index) and ignore repeats."""
    now = self.clock()
    for obs in self._observers:
        obs.on_usage(req, endpoint, usage, now)


def run(self, cycle: CycleState, candidates: Sequence[Endpoint], *, prepared: bool = False) -> list[Endpoint]:
    """``prepared``: this profile's producers already ran on ``cycle`` over ``candidates`` (the
    Director's SLO gate needs their output first); they are not run again."""
    assert self.picker is not None, "profile built without a picker"
    explain = cycle.explain
    info: dict[str, Any] = {}
    if explain:
        info = {"profile": self.name, "candidates": [ep.address for ep in candidates], "filters": []}
        cycle.data.setdefault("explanation", {})[self.name] = info
    if not prepared:
        for producer in self.producers:
            producer.prepare(cycle, candidates)
    eps = list(candidates)
    for flt in self.filters:
        eps = flt.filter(cycle, eps)
        if explain:
            info["filters"].append(
                {"plugin": flt.name, "type": flt.type_name, "kept": [e.address for e in eps]}
            )
        if not eps:
            raise NoCapacityError(f"no endpoint left after filter {flt.name!r} in profile {self.name!r}")
    totals: list[float] = []
    scorers_info: list[dict[str, Any]] = []
    for scorer, weight in self.scorers:
        raw = scorer.score(cycle, eps)
        # Weigh (and clamp to [0, 1] unless the scorer guarantees it): comprehensions, since this
        # runs per endpoint per scorer on every pick.
        if not scorer.bounded:
            raw = [0.0 if s < 0.0 else 1.0 if s > 1.0 else s for s in raw]
        if not totals:
            totals = list(raw) if weight == 1.0 else [weight * s for s in raw]
        else:
            totals = [t + weight * s for t, s in zip(totals, raw, strict=True)]
        if explain:
            scorers_info.append(
                {
                    "plugin": scorer.name,
                    "type": scorer.type_name,
                    "weight": weight,
                    "scores": {e.address: raw[i] for i, e in enumerate(eps)},
                }
            )
    if not totals:
        totals = [0.0] * len(eps)
    picked = self.picker.pick(cycle, eps, totals)
    if not picked:
        raise NoCapacityError(f"picker {self.picker.name!r} returned no endpoint in profile {self.name!r}")
    if explain:
        info["scorers"] = scorers_info
        info["totals"] = {e.address: totals[i] for i, e in enumerate(eps)}
        info["picker"] = self.picker.name
        info["picked"] = [e.address for e in picked]
        info["winner"] = picked[0].address
    for hook in self.post_pick:
        hook.on_picked(cycle, picked[0])
    return picked


def prepare(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> None:
    tokens = self._block_tokens(endpoints)
    if tokens != self._chunk_tokens:
        # The servers' block size changed what a block is: old hashes can never match again.
        self.index.clear()
        self._chunk_tokens = tokens
    req = cycle.request
    ids = self._token_ids(req)
    data: str | bytes = ""
    if ids:
        chunk = tokens * 4  # uint32 per token: a block is exactly ``tokens`` tokens
        data = array("I", ids).tobytes()
        hashes = block_hashes(req.model, data, chunk, self.max_blocks)
    elif req.prompt_text:
        chunk = tokens * CHARS_PER_TOKEN
        data = req.prompt_text
        hashes = block_hashes(req.model, data, chunk, self.max_blocks)
    else:
        chunk, hashes = tokens * CHARS_PER_TOKEN, []
    window = chunk * len(hashes)
    matched: dict[str, int] = {}
    if hashes and len(self.index):
        addrs = [ep.address for ep in endpoints]
        for a, n in zip(addrs, self.index.match(hashes, addrs), strict=True):
            if n:
                matched[a] = n
    overflow = len(hashes) == self.max_blocks and len(data) > window
    match = cycle.data[CYCLE_KEY] = PrefixMatch(
        hashes, matched, chunk, req.model, data if overflow else "", by_ids=bool(ids)
    )
    if hashes:
        # The approximate index's guess wins over a precise scorer's in the same cycle.
        publish_cache_expectation(cycle, match, override=True)


def is_healthy(ep: Endpoint, now: float, policy: HealthPolicy) -> bool:
    if not ep.healthy or ep.scrape_failures >= policy.scrape_failures:
        return False
    t = ep.metrics.updated_at
    return t is not None and now - t <= policy.metrics_staleness_s


def gate(endpoints: Sequence[Endpoint], now: float, policy: HealthPolicy) -> Sequence[Endpoint]:
    """The healthy endpoints; failing open to the non-ejected ones when none is healthy."""
    healthy = [ep for ep in endpoints if is_healthy(ep, now, policy)]
    if healthy:
        return healthy
    return [ep for ep in endpoints if ep.healthy]


def block_hashes(model: str, data: str | bytes, chunk: int, max_blocks: int = MAX_PREFIX_BLOCKS) -> list[int]:
    """Chained hashes of the full ``chunk``-sized blocks of ``data`` (chars for text, bytes otherwise)."""
    if isinstance(data, str):
        raw = data[: chunk * max_blocks].encode("utf-8", "surrogatepass")
    else:
        raw = data[: chunk * max_blocks]
    n = min(len(raw) // chunk, max_blocks)
    prev = _h64(model.encode("utf-8", "surrogatepass"))
    out = [0] * n
    for i in range(n):
        start = i * chunk
        prev = _h64(raw[start : start + chunk] + _pack(prev))
        out[i] = prev
    return out


def index_add(
    self,
    address: str,
    hashes: Sequence[int],
    capacity: int | None = None,
    *,
    filler: int = 0,
    tail_first: bool = False,
) -> None:
    """Record that ``address`` now holds these blocks (most recently used), after ``filler`` blocks
    the index cannot name (older than them); ``tail_first``: the first block ends most recent."""
    lru = self._ensure(address, capacity)
    bit = self._bits[address]
    rev = self._rev
    added = 0
    grown = 0
    seq = self._seq
    if filler > 0:
        key = self._filler_key = self._filler_key - 1
        seq += 1
        lru[key] = seq
        self._weight[key] = filler
        added = 1
        grown = filler - 1
    touched = hashes[::-1] if tail_first else hashes
    for h in touched:
        seq += 1
        if h in lru:
            lru[h] = seq
            lru.move_to_end(h)
        else:
            lru[h] = seq
            cur = rev.get(h)
            # Sole holder: store the shared ``bit`` object itself rather than a fresh int per entry.
            rev[h] = bit if cur is None else cur | bit
            added += 1
    self._seq = seq
    self.total += added
    self._size[address] = self._size.get(address, 0) + added + grown
    self._evict(address, self._limit(address))
    if self.listener is not None:
        self.listener(address, touched, max(filler, 0))


def index_match(self, hashes: Sequence[int], addresses: Sequence[str]) -> list[int]:
    """Leading blocks of ``hashes`` each address holds, aligned with ``addresses``."""
    out = [0] * len(addresses)
    slot = self._slot
    pos: dict[int, int] = {}
    alive = 0
    for i, a in enumerate(addresses):
        s = slot.get(a)
        if s is not None:
            alive |= 1 << s
            pos[s] = i
    if not alive:
        return out
    rev = self._rev
    n = 0
    for h in hashes:
        m = rev.get(h, 0) & alive
        if m != alive:
            dropped = alive & ~m
            while dropped:
                low = dropped & -dropped
                out[pos[low.bit_length() - 1]] = n
                dropped ^= low
            alive = m
            if not alive:
                return out
        n += 1
    while alive:
        low = alive & -alive
        out[pos[low.bit_length() - 1]] = n
        alive ^= low
    return out


def cost_waiting_on_prefix(
    self,
    cycle: CycleState,
    endpoints: Sequence[Endpoint],
    matched: dict[str, int],
    tail_shared: list[int] | None = None,
) -> int:
    """Requests dispatched to the best prefix holder among ``endpoints``, not yet at their first
    token, whose prompts share this request's prefix as deep as that holder holds it. With
    ``burstTail``, when the holder holds the prompt's whole hashed window and the prompt overflows
    it, ``tail_shared`` gets the most tail keys this prompt shares with one of those requests."""
    if not matched or not self._waiting:
        return 0
    best = max(endpoints, key=lambda ep: matched.get(ep.address, 0)).address
    keys, block_tokens = self._prompt_keys(cycle, best)
    # The precise match counts tokens, the approximate one blocks.
    depth = min(matched.get(best, 0) // block_tokens, len(keys))
    if not depth:
        return 0
    key = keys[depth - 1] & _U64  # chained hashes: equal here means the whole prefix is equal
    waiting = self._waiting_at.get(best)
    if not waiting:
        return 0
    recent = islice(reversed(waiting.items()), WAITING_SCAN)
    same = [rid for rid, h in recent if len(h) >= depth and h[depth - 1] == key]
    if same and tail_shared is not None and self.burst_tail and self.precise is None:
        m = prefix_match(cycle)
        if m is not None and m.data and depth == len(m.hashes):
            mine = m.tail_keys()
            most = 0
            for rid in same:
                theirs = self._tails.get(rid)
                if theirs is not None:
                    n = 0
                    for a, b in zip(mine, theirs, strict=False):
                        if a != b:
                            break
                        n += 1
                    most = max(most, n)
            tail_shared.append(most)
    return len(same)


def cost_on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
    req = cycle.request
    p = prompt_tokens(req.prompt_tokens, req.prompt_text, req.token_ids)
    uncached: float
    if self.precise is not None:
        uncached = p - self._precise_cached(cycle, p).get(endpoint.address, 0)
    else:
        m = prefix_match(cycle)
        uncached = p * m.uncached_fraction(endpoint.address) if m is not None else p
    if self.shared_copy:
        keys, _ = self._prompt_keys(cycle, endpoint.address)
        if keys:
            self._forget(req.request_id)  # picked again (a retry): only the latest pick waits
            self._waiting[req.request_id] = endpoint.address
            compact = array("Q", [k & _U64 for k in keys])
            self._waiting_at.setdefault(endpoint.address, {})[req.request_id] = compact
            if self.burst_tail and self.precise is None:
                m = prefix_match(cycle)
                if m is not None and m.data:
                    self._tails[req.request_id] = m.tail_keys()
            if len(self._waiting) > MAX_WAITING_TRACKED:
                self._forget(next(iter(self._waiting)))
    self.mean_uncached += 0.05 * (uncached - self.mean_uncached)
    # coldSpread's reuse count (opt-in until fam31 turned it on in the kvgate policy): taken over from
    # main as it is, like evictionPrice's hook below (the copy checks the CPU cuts, not the pricing)
    if self.cold_spread and uncached < p:
        self._add_reused(endpoint.address, p - uncached, cycle.now)
    # evictionPrice (mt19b; opt-in): taken over from main as it is, the pricing
    # change is deliberate (the copy checks the CPU cuts, not the pricing)
    ledger = self.eviction
    if ledger is not None and self.precise is None:
        mm = prefix_match(cycle)
        hs: Sequence[int] = mm.hashes if mm is not None else ()
        held = mm.matched.get(endpoint.address, 0) if mm is not None else 0
        met = endpoint.metrics
        cap = float(met.num_gpu_blocks * met.block_size) if met.num_gpu_blocks and met.block_size else 0.0
        free = ledger.free_tokens(endpoint)
        ledger.picked(endpoint.address, hs, held, float(p), uncached, free, cycle.now, cap)
        ledger.started(req.request_id, uncached, cycle.now)
    if self.head_of_line:
        now = cycle.now
        a = endpoint.address
        n, t = self._arrivals.get(a, (0.0, now))
        # (max: a clock that steps back, or workers' clocks apart, must not grow the count)
        self._arrivals[a] = (n * math.exp(-max(0.0, now - t) / RATE_WINDOW_S) + 1.0, max(now, t))
        if len(self._arrivals) > MAX_ENDPOINTS_TRACKED:  # endpoints gone: forget the longest unpicked
            del self._arrivals[min(self._arrivals, key=lambda k: self._arrivals[k][1])]
        todo = endpoint.inflight.pending_prefill_tokens + uncached
        if todo >= SPT_MIN_TOKENS:
            self._timed.pop(req.request_id, None)
            self._timed[req.request_id] = (now, todo)
            if len(self._timed) > MAX_WAITING_TRACKED:
                self._timed.popitem(last=False)


class RefProfile(SchedulerProfile):
    run = run  # the old SchedulerProfile.run


def use_reference(director: Director) -> Director:
    """Make ``director`` (freshly built) run the reference code; returns it."""
    patched = ("candidates", "pick", "_pick", "on_dispatched", "on_first_token", "on_finished", "on_usage")
    for name in (*patched, "_release", "_remember"):
        setattr(director, name, types.MethodType(globals()[name], director))
    for name, p in list(director.profiles.items()):
        director.profiles[name] = RefProfile(p.name, p.filters, p.scorers, p.picker, p.producers, p.post_pick)
    for plugin in director.handle.plugins.values():
        if isinstance(plugin, PrefixCacheScorer):
            plugin.prepare = types.MethodType(prepare, plugin)  # type: ignore[method-assign]
            index = plugin.index
            index.add = types.MethodType(index_add, index)  # type: ignore[method-assign]
            index.match = types.MethodType(index_match, index)  # type: ignore[method-assign]
        if isinstance(plugin, KVGateCostScorer):
            plugin.on_picked = types.MethodType(cost_on_picked, plugin)  # type: ignore[method-assign]
            plugin._waiting_on_prefix = types.MethodType(  # type: ignore[method-assign]
                cost_waiting_on_prefix, plugin
            )
    return director
