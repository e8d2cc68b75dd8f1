"""The cost scorer's ``costs`` after session 26's cut (cpu26) prices exactly as before: the same floats.

``reference_costs`` below is ``KVGateCostScorer.costs`` copied verbatim from main 6c4d40fa (before the
cut; dedented to a function taking ``self``). Do not "fix" or speed it up: it is the yardstick. The cut
builds the optional terms' lists only when they are on, tests the four optional per-endpoint terms once,
and takes ``max`` and ``enumerate`` as plain loops; it does not reorder a float operation. Each test
drives a Director through the seeded generated trace (``kvgate.bench.picktrace``) and, at every pick,
prices the candidates with both functions on the same state: every cost must be bit-for-bit the same
(``float.hex``), with every option of the scorer off (the named policy) and on, and with pages that
report a non-finite KV use. When the scorer's pricing changes on purpose, change the copy alike.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from kvgate.bench import picktrace
from kvgate.config.policies import policy_yaml
from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, add_explanation, publish_cache_expectation
from kvgate.scheduling.plugins.kvgate_cost import COLD_MATCH, KVGateCostScorer, _TailExpectation
from kvgate.scheduling.plugins.precise_prefix import CYCLE_KEY as PRECISE_KEY
from kvgate.scheduling.plugins.prefix_cache import CYCLE_KEY as PREFIX_KEY
from kvgate.scheduling.plugins.prefix_cache import TAIL_STRIDE, PrefixMatch, prefix_match
from kvgate.scheduling.types import prompt_tokens

STEPS = 2500


def reference_costs(self: KVGateCostScorer, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
    req = cycle.request
    # (``prompt_tokens`` inlined for a request with its estimate, ``precise`` once resolved)
    p = req.prompt_tokens
    if p <= 0:
        p = prompt_tokens(p, req.prompt_text, req.token_ids)
    matched: dict[str, int]
    held: dict[str, float] | dict[str, int]
    precise_src = (self._precise if self._resolved else self.precise) is not None
    if precise_src:
        matched, per_block = self._precise_cached(cycle, p), 1.0  # already in tokens
        held = matched
    else:
        m = cycle.data.get(PREFIX_KEY)  # (``prefix_match`` inlined: once per pick)
        if not isinstance(m, PrefixMatch):
            m = None
        # Hot loop (once per endpoint per pick): locals only, freshness and match ratio inlined.
        matched = m.matched if m is not None and m.hashes else {}
        per_block = p / len(m.hashes) if matched and m is not None else 0.0
        held = matched
        if matched and m is not None and m.data:
            # A prompt past the hashed window: a partial match is its blocks' share of the whole
            # prompt, a whole-window one extrapolated (``PrefixMatch.held_share``; review s21-fixes-a L4).
            n = len(m.hashes)
            part = m.chunk * n / len(m.data)
            held = {a: b if b >= n else b * part for a, b in matched.items()}
    miss_penalty = self.miss_penalty
    kv_scaled = self.kv_scaled_miss
    now = cycle.now
    staleness = self.handle.staleness
    mean_uncached = self.mean_uncached
    decode_weight = self.decode_weight
    kv_high, kv_thr, q_thr, max_inf = (
        self.kv_high,
        self.kv_threshold,
        self.queue_threshold,
        self.max_inflight,
    )
    kv_scale = max(p, 1024) / (1.0 - kv_high + 1e-9)
    mqs = self.miss_queue_scale
    get = held.get
    # Fewest uncached tokens among these candidates (a filter may have removed the best holder):
    # what is lost by going elsewhere is the prefix beyond that.
    best_uncached = p - (max(get(ep.address, 0) for ep in endpoints) * per_block if matched else 0.0)
    # A copy of a prefix that other requests are waiting on right now (a burst) is shared by them:
    # its displacement of other groups' blocks is split over this request and those waiting.
    tail_shared: list[int] = []
    # (``_waiting_on_prefix`` is 0 without a match or a waiting request: not called then)
    shared_copy = self.shared_copy and matched and self._waiting
    waiting = self._waiting_on_prefix(cycle, endpoints, matched, tail_shared) if shared_copy else 0
    share = 1.0 / (1 + waiting)
    # burstTail: a match of the whole hashed window is extrapolated over the prompt's unhashed tail,
    # as if the tail were cached too. When requests with this head are waiting at the holder (a
    # burst), the tail is compared with theirs: past the part they share, it is this request's own
    # (its question), uncached everywhere, and work the holder must do before it answers.
    tail = 0.0
    if tail_shared:
        m = prefix_match(cycle)
        if m is not None and m.data:
            shared_units = m.chunk * (len(m.hashes) + tail_shared[0] * TAIL_STRIDE)
            tail = p * max(0.0, 1.0 - shared_units / len(m.data))
            if best_uncached < tail:
                best_uncached = tail
            if tail:
                publish_cache_expectation(cycle, _TailExpectation(m, tail / p), override=True)
    # Learned pace (seconds per token-slot, load-independent: ``scheduling.speed``): the same tokens
    # take longer on a slower replica, so its costs are scaled by its pace over the fastest one's
    # (cost in time = work / speed).
    fastest = 0.0
    if self.learn_pace:
        # Only once every candidate's pace is known (a loop: a comprehension is a call in 3.11).
        for ep in endpoints:
            pace = ep.inflight.pace
            if not pace > 0.0:
                fastest = 0.0
                break
            if not fastest or pace < fastest:
                fastest = pace
    spt = self.spt if self.head_of_line else 0.0
    # coldSpread: a prompt no candidate holds costs more where the cache it evicts is reused more
    # (at most one more full-cache displacement per token).
    spread: list[float] | None = None
    # (coldSpreadDecodeHeavy, fam30: only a request whose max_tokens exceeds its prompt pays)
    if (
        self.cold_spread
        and best_uncached > (1.0 - COLD_MATCH) * p
        and (not self.cold_spread_decode_heavy or (req.max_tokens or 0) > p)
    ):
        rates = [self.reuse_rate(ep.address, now) for ep in endpoints]
        mean = sum(rates) / len(rates)
        if mean > 0.0:
            low = min(rates)
            spread = [miss_penalty * min(1.0, (r - low) / mean) for r in rates]
    output = (req.max_tokens or 0) * req.sequences  # (each of ``n`` choices writes its own blocks)
    out_tokens = output if self.output_displacement else 0
    evict: list[float] | None = None
    ledger = self.eviction
    if ledger is not None and not precise_src:  # (it learns from the approximate index's keys)
        unc = [p - get(ep.address, 0) * per_block if matched else float(p) for ep in endpoints]
        mh = prefix_match(cycle)
        hs = mh.hashes if mh is not None else ()
        evict = ledger.prices(endpoints, unc, float(output), miss_penalty, now, hs)
    costs: list[float] = []
    saturated: list[int] = []  # (the saturated candidates' indices: most picks have none)
    # replicateLoaded: per endpoint, the pace-scaled premium its lost prefix pays over a plain
    # prefill (displacement and backlog), and each best holder's pace-scaled tokens ahead.
    replicate = self.replicate_loaded and matched and best_uncached < p
    premiums: list[float] = []
    holder_ahead: list[float] = []
    for i, ep in enumerate(endpoints):
        inf = ep.inflight
        ahead: float = inf.pending_prefill_tokens
        load = inf.requests
        # Requests not yet started there: own not-yet-first-token ones, or the fresh scraped queue.
        queued = load - inf.decoding
        sat = 0 < max_inf <= load
        cost = 0.0
        # A miss computes the prefix now and, when the cache is full, displaces others' cached
        # prefixes (recomputed later): the displacement share grows with the KV already in use.
        fill = 1.0
        met = ep.metrics
        t = met.updated_at
        if t is not None and now - t <= staleness:
            q = met.waiting_queue_size
            if q > queued:
                queued = q
            if q:
                # Only the part of the server's queue our own accounting does not explain.
                extra = q - (load - inf.decoding)
                if extra > 0:
                    ahead += extra * mean_uncached
                if q_thr and q >= q_thr:
                    sat = True
            if met.running_requests + q > load:
                load = met.running_requests + q
            kv = met.kv_cache_usage
            if kv_scaled:
                fill = kv
            if kv > kv_high:
                cost = (kv - kv_high) * kv_scale
            if kv >= kv_thr:
                sat = True
        miss = 1.0 + miss_penalty * fill
        uncached = p - get(ep.address, 0) * per_block if matched else p
        if uncached < tail:
            uncached = tail
        # The prefix another candidate holds, computed again here (a second copy).
        lost = uncached - best_uncached if uncached > best_uncached else 0.0
        miss_lost = 1.0 + miss_penalty * fill * share
        work = ahead + miss * (uncached - lost) + miss_lost * lost + decode_weight * load
        if out_tokens:
            # The output's blocks are cached too (vLLM keeps full blocks of generated tokens): they
            # displace other prefixes as a miss's prompt blocks do, more where the cache is fuller.
            work += (miss - 1.0) * out_tokens
        if spread is not None:
            work += spread[i] * uncached
        if evict is not None:
            work += evict[i]
        if spt:
            # The arrivals expected while these tokens are computed, each delayed by them.
            work += self.arrival_rate(ep.address, now) * spt * uncached * (ahead + 0.5 * uncached)
        backlog = 0.0
        if mqs and queued > 0 and lost:
            # Recomputing a prefix on a replica with a queue delays every request queued there,
            # and the new copy evicts other groups' prefixes: under overload, spilling adds work
            # to a fleet with none to spare. Grows with that replica's backlog (requests), not
            # with its running batch.
            backlog = miss_lost * lost * queued / mqs
            work += backlog
        if fastest:
            scale = inf.pace / fastest
            work *= scale
        else:
            scale = 1.0  # (``work *= 1.0`` changes no float: not done)
        if replicate:
            # Only onto a replica with nothing queued: the copy then delays no one.
            idle = ahead == 0 and queued <= 0
            premiums.append(((miss_lost - 1.0) * lost + backlog) * scale if idle else 0.0)
            if not lost and uncached == best_uncached:
                holder_ahead.append(ahead * scale)
        costs.append(cost + work)
        if sat:
            saturated.append(i)
    if replicate and holder_ahead and min(holder_ahead) > p - best_uncached:
        # Every best holder has more prefill queued in front of it than a hit there saves: the
        # prefix's demand exceeds what its holders serve in time, so a second copy is wanted and
        # costs its prefill only (the index then counts the new replica as a holder too).
        costs = [c - prem for c, prem in zip(costs, premiums, strict=True)]
    if saturated and len(saturated) < len(costs):
        pen = self.saturation_penalty
        for i in saturated:
            costs[i] += pen
    if cycle.explain:
        add_explanation(cycle, "costs", {ep.address: c for ep, c in zip(endpoints, costs, strict=True)})
    return costs


def _doc(**params: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(policy_yaml("kvgate"))
    for plugin in doc["plugins"]:
        if plugin["type"] == "kvgate-cost-scorer":
            plugin.setdefault("parameters", {}).update(params)
    return doc


# Every option of the scorer on, and its saturation thresholds set (the named policy has them off).
EVERY_OPTION = {
    "replicateLoaded": True,
    "headOfLine": True,
    "burstTail": True,
    "outputDisplacement": True,
    "coldSpread": True,
    "evictionPrice": True,
    "queueThreshold": 5,
    "maxInFlight": 6,
    "kvCacheUtilThreshold": 0.97,
}


def _hex(costs: Sequence[float]) -> list[str]:
    return [float(c).hex() for c in costs]


class _Checked:
    """Replaces the scorer's ``costs``: prices with the reference, then with the cut, and compares."""

    def __init__(self, scorer: KVGateCostScorer) -> None:
        self.scorer = scorer
        self.calls = 0
        self.differ: list[tuple[str, list[float], list[float]]] = []  # (request id, cut's, reference's)
        self.paced = 0  # calls where every candidate's pace was known (the pace-scaled branch)
        self.nonfinite = 0  # calls where a candidate's page reports a non-finite KV use (fresh or not)
        self.precise = 0  # calls with the precise scorer as the source and a candidate holding the prefix

    def __call__(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        want = reference_costs(self.scorer, cycle, endpoints)
        got = KVGateCostScorer.costs(self.scorer, cycle, endpoints)
        if _hex(got) != _hex(want):
            # (kept, not raised: the Director answers a plugin's exception as that pick's error)
            self.differ.append((cycle.request.request_id, got, want))
        self.calls += 1
        if all(ep.inflight.pace > 0.0 for ep in endpoints):
            self.paced += 1
        if any(
            ep.metrics.kv_cache_usage != ep.metrics.kv_cache_usage
            or abs(ep.metrics.kv_cache_usage) == float("inf")
            for ep in endpoints
        ):
            self.nonfinite += 1
        held = cycle.data.get(PRECISE_KEY)
        if self.scorer.precise is not None and isinstance(held, dict) and any(held.values()):
            self.precise += 1
        return got


def _run(
    doc: Any, n: int, seed: int, *, spt: float = 0.0, pace: bool = False, odd_kv: bool = False
) -> _Checked:
    d, store, clock = picktrace.build(doc, n, seed)
    scorer = d.handle.find(KVGateCostScorer)
    assert isinstance(scorer, KVGateCostScorer)
    if spt:
        scorer.spt = spt  # (as learned: headOfLine's term priced from the first pick)
    checked = _Checked(scorer)
    scorer.costs = checked  # type: ignore[method-assign]
    eps = list(store.all())
    rng = random.Random(seed)
    if pace or odd_kv:
        # Set again on every scrape the trace makes: the trace's own scrapes stay, these are added.
        original = picktrace._scrape

        def scrape(m: Any, r: random.Random, now: float) -> None:
            original(m, r, now)
            if odd_kv and rng.random() < 0.2:
                m.kv_cache_usage = rng.choice((float("inf"), float("-inf"), float("nan"), 1e308, -0.0))

        picktrace._scrape = scrape  # type: ignore[assignment]
        try:
            if pace:
                for i, ep in enumerate(eps):
                    ep.inflight.pace = 0.001 * (1 + i % 3)
            picktrace.run(d, store, clock, seed, STEPS, explain_every=7)
        finally:
            picktrace._scrape = original  # type: ignore[assignment]
    else:
        picktrace.run(d, store, clock, seed, STEPS, explain_every=7)
    return checked


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [2, 8])
def test_named_policy_costs_as_before(seed: int, n: int) -> None:
    checked = _run("kvgate", n, seed)
    assert checked.differ == [] and checked.calls > 500


@pytest.mark.parametrize("seed", [2, 3])
def test_every_option_costs_as_before(seed: int) -> None:
    checked = _run(_doc(**EVERY_OPTION), 5, seed, spt=1e-4)
    assert checked.differ == [] and checked.calls > 500


def test_paced_costs_as_before() -> None:
    checked = _run("kvgate", 4, 4, pace=True)
    assert checked.differ == [] and checked.calls > 500 and checked.paced > 100


@pytest.mark.parametrize("doc", ["kvgate", "every option"])
def test_non_finite_pages_cost_as_before(doc: str) -> None:
    """A page reporting an infinite or NaN KV use (a broken server's) is priced as before, NaN for NaN.
    (Without ``evictionPrice``: its ledger raises on an infinite page, before and after the cut.)"""
    options = {k: v for k, v in EVERY_OPTION.items() if k != "evictionPrice"}
    checked = _run("kvgate" if doc == "kvgate" else _doc(**options), 4, 5, odd_kv=True)
    assert checked.differ == [] and checked.calls > 500 and checked.nonfinite > 50


# Each opt-in term alone (review s26-rev-fixqa26a R4: with every option on, ``outputDisplacement``'s
# tokens set the cut's one ``optional`` flag, so a term missing from that flag was priced anyway).
ALONE = [
    ({"outputDisplacement": True}, 0.0),
    ({"coldSpread": True}, 0.0),
    ({"coldSpread": True, "coldSpreadDecodeHeavy": True}, 0.0),
    ({"evictionPrice": True}, 0.0),
    ({"headOfLine": True}, 1e-4),
]


@pytest.mark.parametrize(("params", "spt"), ALONE, ids=[next(iter(p)) for p, _ in ALONE])
def test_each_option_alone_costs_as_before(params: dict[str, Any], spt: float) -> None:
    checked = _run(_doc(**params), 5, 7, spt=spt)
    assert checked.differ == [] and checked.calls > 500


def _precise(index_name: str, tokenizer: str, **params: Any) -> dict[str, Any]:
    """``serve --kv-events auto``'s profile (the precise scorer the cost scorer's source: ``precise_src``,
    the match in tokens, from its pick credit here), on its own named index (the registry is
    process-wide); ``tokenizer``: the simulator's byte-level BPE (without one nothing is matched)."""
    from kvgate.config.policies import precise_policy

    doc = precise_policy(tokenizer, bind=False)
    for plugin in doc["plugins"]:
        if plugin["type"] == "precise-prefix-cache-scorer":
            plugin["parameters"]["indexName"] = index_name
        elif plugin["type"] == "kvgate-cost-scorer":
            plugin["parameters"].update(params)
    return doc


@pytest.mark.parametrize("options", ["named", "every option"])
def test_precise_profile_costs_as_before(options: str, tmp_path: Any) -> None:
    """Review s26-rev-fixqa26a R4: the precise-prefix profile was not run (its ``max`` loop runs over token
    counts). (``evictionPrice`` prices nothing with the precise source: the profile leaves it off.)"""
    from kvgate.scheduling.plugins import precise_prefix
    from kvgate.sim.tokenizer import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "t")
    name = f"cpu26-precise-{options}"
    params = {k: v for k, v in EVERY_OPTION.items() if k != "evictionPrice"} if options != "named" else {}
    try:
        checked = _run(_precise(name, str(tmp_path / "t"), **params), 4, 8, spt=1e-4 if params else 0.0)
    finally:
        precise_prefix._INDEXES.pop(name, None)
    assert checked.differ == [] and checked.calls > 500 and checked.precise > 100


def test_the_check_is_not_vacuous() -> None:
    """The comparison sees a difference when there is one: a parameter moved by 1e-9 shows in ``_hex``."""
    d, store, clock = picktrace.build("kvgate", 3, 6)
    scorer = d.handle.find(KVGateCostScorer)
    assert isinstance(scorer, KVGateCostScorer)
    eps = list(store.all())
    picktrace.run(d, store, clock, 6, 300)
    cycle = CycleState(_long_request(), clock.now)
    d.profiles["default"].producers[0].prepare(cycle, eps)
    got = KVGateCostScorer.costs(scorer, cycle, eps)
    assert _hex(got) == _hex(reference_costs(scorer, cycle, eps))
    scorer.decode_weight += 1e-9
    assert _hex(KVGateCostScorer.costs(scorer, cycle, eps)) != _hex(got)


def _long_request() -> Any:
    from kvgate.scheduling.types import InferenceRequest

    return InferenceRequest("z", "m", prompt_text="System 3: " * 400, max_tokens=64)
