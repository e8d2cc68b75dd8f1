"""Cluster selection policies: each orders the clusters for one request (first = chosen, the rest = failover).

- ``round-robin``: rotate, blind to load and health (only a failed cluster's back-off is skipped).
- ``active-passive``: the lowest ``priority`` whose EPP reports SERVING over gRPC health; the rest in order.
- ``llm-d-hub``: as llm-d's alpha hub plugins: score = (1 - average KV) + min-max-normalised queue
  (lowest average queue = 1), highest first; whatever snapshot it last saw, however old (no staleness
  check, no health filter), and a cluster never heard from scores as idle.
- ``kvgate``: health-gated (fresh snapshot within the TTL, EPP not NOT_SERVING, at least one ready endpoint:
  unknown is never zero load, zero ready endpoints never chosen); every cluster costed in one unit, the
  request's predicted TTFT there in seconds:
  - the cluster's idle TTFT as this gateway sees it (RTT included): its measured TTFT floor (a 10th
    percentile tracker, whatever its GPU labels say), or before any answer a prior over its mean speed,
    in the unit of the measured clusters (their floors over their own priors), plus its RTT;
  - x (1 + u) while it has room, u its occupancy after this request: requests there over the requests it
    holds when full (the snapshot's ``request_slots``, from what its engines report of their KV caches),
    counting the queue its headroom cannot show once full and what this gateway sent since the snapshot;
  - past full, + the wait for a slot: (u - 1) x the time a request holds one (its idle TTFT plus its
    decode time as this gateway measured it, first byte to end; before any, one idle TTFT per request
    ahead per ready endpoint);
  - x the model's error there (``ClusterState.model_bias``: observed over predicted at dispatch, the
    prediction being the load factor this request's order computed there x the floor when it answers,
    clamped to [1/4, 8], a geometric EWMA, at least 1, fading with its age): an answer describes the
    queue its request met, so it corrects the model, and the model follows the current snapshot (a
    drained cluster is not judged by its last slow answers, nor an understated one by its empty-looking
    snapshot);
  - never below the present evidence: the floor x this gateway's requests still waiting there for a
    first byte, the oldest one's age (a censored observation).
  A slow cluster and a full one are then compared as what they are, waits: a full local cluster keeps the
  overflow until its queue is as long as an idle slow cluster's TTFT. A prefix miss is in the idle TTFT:
  (1 - the share of the request's leading blocks in the cluster's Bloom summary) x the cluster's miss
  cost (measured from its answers at the idle scale, never below ``affinity`` / (1 - ``affinity``) x its
  idle TTFT, the relative discount it replaced; that floor is the estimate before a measurement). Then
  relative discounts: the local cluster and the request's prefix home (weighted rendezvous hashing of its
  first 256 chars, weights = each cluster's throughput, slots over slot time, in half-octave classes:
  gateways that hold the same classes compute the same home, so each tenant's prefix lives in one
  cluster, not in all of them; spill-over is the home's predicted TTFT rising). The classes are held with
  hysteresis, so two gateways with different histories can hold a class apart for the same measurement
  (near a class boundary) and split that cluster's marginal tenants between two homes. Then power-of-two
  choices among the clusters within ``slack`` of the best (no herding between refreshes, nor between
  gateways sharing a snapshot). A cluster that comes back (stale, empty or NOT_SERVING, then usable) is
  in slow start (``ClusterState.start_ramp``): with its window of requests in their prefill in use, it
  comes after the other usable clusters. Unknown clusters are tried only after every known-good one (ordered
  by RTT), so a request is not lost when all snapshots are stale.
"""

from __future__ import annotations

import math
import os
import random
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from xxhash import xxh64_intdigest

from kvgate.datalayer.aggregate import MAX_BATCH
from kvgate.multicluster.state import ClusterState, DispatchNote
from kvgate.scheduling.prefix import block_hashes

POLICIES = ("kvgate", "llm-d-hub", "round-robin", "active-passive")


@dataclass(slots=True)
class ClusterRequest:
    """What a policy may know about a request: its model and prompt (for prefix affinity)."""

    model: str = ""
    prompt: str | bytes | None = None
    stream: bool = False  # a streamed response: its first byte is the TTFT evidence the policy learns from
    usage: bool = False  # the client asked for the stream's usage event (only then is one scanned for)
    # Set by the kvgate policy's ``order``: cluster -> its model's load factor for this request there
    # (model TTFT / idle TTFT), what a streamed dispatch there keeps (``ClusterState.dispatched``) to judge
    # its answer by. Per request, so a concurrent ``order`` for another request cannot overwrite it.
    model_load: dict[str, float] = field(default_factory=dict)
    # Also set by ``order``: cluster -> the share of the request's leading blocks its Bloom summary holds
    # (where it has one and the request has blocks), kept with the dispatch (``ClusterState.dispatched``)
    # so its answer teaches that cluster what a miss costs.
    cached: dict[str, float] = field(default_factory=dict)
    # Also set by ``order``: cluster -> the load factor alone (``model_load`` without the predicted
    # prefill of the uncached part and without the wait past full), what its answer less that wait is
    # divided by to learn the miss cost at idle.
    queue_load: dict[str, float] = field(default_factory=dict)
    # Also set by ``order``: cluster -> the predicted wait for a slot past full (seconds, added to the
    # TTFT, not multiplied: review s7-final-b A), taken off an answer before the division.
    queue_wait: dict[str, float] = field(default_factory=dict)
    _hashes: dict[int, list[int]] = field(default_factory=dict)

    def note(self, cluster: str) -> DispatchNote:
        """What the policy expected of this request at ``cluster``, for its dispatch there."""
        return DispatchNote(
            self.model_load.get(cluster),
            self.cached.get(cluster),
            home_key(self),
            self.queue_load.get(cluster),
            self.queue_wait.get(cluster),
        )

    def hashes(self, chunk: int, max_blocks: int = 16) -> list[int]:
        # Leading blocks only: shared system prompts / tenant prefixes live there.
        got = self._hashes.get(chunk)
        if got is None:
            got = self._hashes[chunk] = (
                block_hashes(self.model, self.prompt, chunk, max_blocks) if self.prompt else []
            )
        return got


def prompt_key(text: str | None, token_ids: Sequence[int] | None) -> str | bytes | None:
    """What the cluster's approximate prefix scorer hashes: the prompt text, else the token ids as uint32
    bytes (a block of ``block_size`` tokens is then ``4 x block_size`` bytes, the same chunk length)."""
    if text:
        return text
    if token_ids:
        return array("I", token_ids).tobytes()
    return None


class Policy(Protocol):
    name: str

    def order(
        self, clusters: Sequence[ClusterState], req: ClusterRequest, now: float
    ) -> list[ClusterState]: ...


class RoundRobin:
    name = "round-robin"

    def __init__(self) -> None:
        self._i = 0

    def order(self, clusters: Sequence[ClusterState], req: ClusterRequest, now: float) -> list[ClusterState]:
        if not clusters:
            return []
        k = self._i % len(clusters)
        self._i += 1
        rot = list(clusters[k:]) + list(clusters[:k])
        return [c for c in rot if c.available(now)] + [c for c in rot if not c.available(now)]


class ActivePassive:
    name = "active-passive"

    def order(self, clusters: Sequence[ClusterState], req: ClusterRequest, now: float) -> list[ClusterState]:
        ranked = sorted(clusters, key=lambda c: c.spec.priority)
        up = [c for c in ranked if c.healthy is not False and c.available(now)]
        return up + [c for c in ranked if c not in up]


class LlmdHub:
    name = "llm-d-hub"

    def order(self, clusters: Sequence[ClusterState], req: ClusterRequest, now: float) -> list[ClusterState]:
        def kv(c: ClusterState) -> float:
            return c.aggregate.average_kv_cache_utilization if c.aggregate else 0.0

        def q(c: ClusterState) -> float:
            return c.aggregate.average_queue_size if c.aggregate else 0.0

        qs = [q(c) for c in clusters]
        lo, hi = min(qs, default=0.0), max(qs, default=0.0)

        def score(c: ClusterState) -> float:
            qn = 1.0 if hi == lo else 1.0 - (q(c) - lo) / (hi - lo)
            return (1.0 - kv(c)) + qn

        # Stable sort: ties go to the first listed cluster, as a deterministic scorer's max does.
        return sorted(clusters, key=score, reverse=True)


@dataclass(slots=True)
class KvgateWeights:
    """Relative discounts on a cluster's predicted TTFT (scale-free: they weigh the same at 50 ms and 5 s)."""

    local_bonus: float = 0.1  # the local cluster (no egress, no WAN): 10 % off its predicted TTFT
    # A request whose leading blocks are all in the cluster's Bloom summary (a hit) costs at least this
    # much less at idle than a miss there (the floor of the miss cost, ``KvgatePolicy.miss_cost``).
    affinity: float = 0.25
    # The request's prefix home (weighted rendezvous): where its tenant's prefix is kept, so a hit there
    # and a likely miss elsewhere (a miss of a long shared prefix costs well over 1 / (1 - 0.4) = 1.7x a
    # hit). Larger than the local bonus: a tenant homed away from the local cluster stays there.
    home_bonus: float = 0.4
    slack: float = 0.08  # power of two among clusters within this fraction of the best cost
    # A cluster with no TTFT observed yet: this / its mean speed, scaled to the measured clusters' unit
    # (``KvgatePolicy.calibrate_prior``), + its RTT.
    prior_ttft_s: float = 0.05

    def __post_init__(self) -> None:
        if not (math.isfinite(self.prior_ttft_s) and self.prior_ttft_s > 0.0):
            raise ValueError(f"prior_ttft_s must be a positive number of seconds, not {self.prior_ttft_s!r}")


# What names a request's prefix home: its first HOME_BLOCKS blocks of HOME_CHUNK chars (bytes for token
# ids), 256 chars: inside the tenant's shared context (a chat template's header, a system prompt), not its
# question, for any tenant whose shared prefix is at least that long (a shorter one's requests are spread
# by question). Fixed, whatever chunk the clusters' summaries use: a cluster going stale or a summary
# with another chunk must not re-key every tenant (homes would then move wholesale).
HOME_BLOCKS = 4
HOME_CHUNK = 64
# A home weight's class (a half-octave) changes once the measurement is this many half-octaves from the
# class's centre (a whole class; rounding alone changes it at half of one): ``KvgatePolicy.home_weight``.
HOME_CLASS_HOLD = 1.0
# The least prefill (a floor less the configured RTT) a measured floor is taken to show, in seconds: a floor
# at or under its cluster's ``rtt_ms`` (configured, not measured) shows an overstated RTT, not a free
# prefill (``KvgatePolicy.calibrate_prior``, ``home_weight``).
MIN_PREFILL_S = 1e-3


def _unit(h: int) -> float:
    """A 64-bit hash as a uniform number in (0, 1)."""
    return (h + 0.5) / 18446744073709551616.0


def home_key(req: ClusterRequest) -> bytes | None:
    """The key of the request's prefix home: the chained hash of its first ``HOME_BLOCKS`` full blocks of
    ``HOME_CHUNK`` (fewer for a shorter prompt); None without a full block. Depends on the request only."""
    if not req.prompt:
        return None
    hashes = req.hashes(HOME_CHUNK)  # (the chunk's 16-block list, shared with the Bloom affinity's)
    if not hashes:
        return None
    return hashes[min(len(hashes), HOME_BLOCKS) - 1].to_bytes(8, "little")


class KvgatePolicy:
    name = "kvgate"

    def __init__(
        self,
        *,
        ttl_s: float = 3.0,
        local: str | None = None,
        weights: KvgateWeights | None = None,
        rng: random.Random | None = None,
        per_request: float = 1.0 / MAX_BATCH,
    ) -> None:
        self.ttl_s = ttl_s
        self.local = local
        self.w = weights or KvgateWeights()
        self.rng = rng or random.Random(0)
        # Capacity one request takes on a speed-1 endpoint, for a snapshot without ``request_slots``.
        self.per_request = per_request
        self.last_costs: dict[str, float] = {}
        self.last_home: str | None = None
        # The prior's unit (``prior_scale``): measured floors over their own priors, set by ``order``.
        self.prior_scale = 1.0
        self._home_class: dict[str, int] = {}  # cluster -> its held home weight class k (2^(k/2))
        # Requests ordered first to each cluster, and of those how many had their prefix home elsewhere
        # (a spill, or a home that moved): what a trace of the policy reads (``GlobalRouter.summary``).
        self.first_to: dict[str, int] = {}
        self.first_away: dict[str, int] = {}

    def usable(self, c: ClusterState, now: float) -> bool:
        a = c.aggregate
        return (
            c.available(now)
            and c.healthy is not False
            and c.fresh(now, self.ttl_s)
            and a is not None
            and a.ready_endpoints > 0
            and a.capacity > 0
        )

    def request_share(self, c: ClusterState) -> float:
        """The capacity one request takes there: capacity over the requests the cluster holds when full,
        those at most ``MAX_BATCH`` per ready endpoint, the most kvgate's aggregate reports (its
        ``endpoint_slots``): a member claiming more (``request_slots`` 1e6 on 4 endpoints) costed ~0
        whatever was sent there and took every request (review s25-rev-fixqa25 R3). Clamped here, not
        refused at decode: a newer kvgate that holds more per endpoint is only costed fuller than it is."""
        a = c.aggregate
        assert a is not None
        if a.request_slots > 0:
            return a.capacity / min(a.request_slots, MAX_BATCH * max(1, a.ready_endpoints))
        return self.per_request

    def slots(self, c: ClusterState) -> float:
        """Requests the cluster holds when full."""
        a = c.aggregate
        assert a is not None
        return a.capacity / self.request_share(c)

    def utilisation(self, c: ClusterState) -> float:
        """Requests there after this one / the requests it holds when full. Headroom stops at zero when the
        cluster is full, so the queue past that point is added from the snapshot's queue length (what the
        headroom could not absorb): a full cluster with a longer queue is fuller."""
        a = c.aggregate
        assert a is not None
        share = self.request_share(c)
        # (clamped as ``aggregate.impossible`` checks a fetched one: an aggregate set in-process, by a
        # benchmark or a test, takes the same numbers; qa25 F1)
        headroom = min(max(a.headroom, 0.0), a.capacity)
        queued = max(a.average_queue_size, 0.0) * a.ready_endpoints * share
        used = a.capacity - headroom + max(0.0, queued - headroom)
        used += (c.sent_since_snapshot + 1) * share
        return used / a.capacity

    def base_ttft(self, c: ClusterState) -> float:
        """The cluster's TTFT for a request at idle, as this gateway sees it (RTT included): its measured
        TTFT floor; before any answer, the prior over the snapshot's mean speed, in the measured clusters'
        unit (x ``prior_scale``), plus the round trip."""
        if c.ttft_floor_s:
            return c.ttft_floor_s
        return self.prior_prefill(c) * self.prior_scale + c.spec.rtt_ms / 1000.0

    def prior_prefill(self, c: ClusterState) -> float:
        """The prior's idle TTFT there without the round trip: ``prior_ttft_s`` over the snapshot's mean
        speed (its GPU labels), in the prior's own unit."""
        a = c.aggregate
        assert a is not None
        speed = a.capacity / a.ready_endpoints if a.ready_endpoints else 1.0
        return self.w.prior_ttft_s / max(speed, 1e-3)

    def calibrate_prior(self, clusters: Sequence[ClusterState]) -> float:
        """The prior's unit in seconds of this workload: the geometric mean, over the clusters with a
        measured floor, of that floor (less the round trip) over the prior for that cluster; 1 before any.
        ``prior_ttft_s`` is a guess (50 ms per speed-1 endpoint), and the floors are what the workload
        takes (live, 0.27 s for a hit and 1.2 s for a cold start's misses): an unanswered cluster costed
        at the raw prior looked 7x faster than the answered ones and was home to 73 % of the tenants in
        a gateway's first 9 s (live run, seed 8), whose prefixes then moved. Only the speed ratio between
        clusters comes from the labels; the unit comes from the measurements."""
        logs = [
            math.log(max(c.ttft_floor_s - c.spec.rtt_ms / 1000.0, MIN_PREFILL_S) / self.prior_prefill(c))
            for c in clusters
            if c.ttft_floor_s and c.aggregate is not None and c.aggregate.ready_endpoints > 0
        ]
        self.prior_scale = math.exp(sum(logs) / len(logs)) if logs else 1.0
        return self.prior_scale

    def predicted_ttft(self, c: ClusterState, now: float = 0.0, req: ClusterRequest | None = None) -> float:
        """This request's TTFT there, in seconds: the one unit every cluster is costed in. The model
        (``model_ttft``) times the error it made there (``ClusterState.model_bias``: answers slower than
        predicted at their dispatch scale it up, fading with their age), never below the present
        evidence (the floor x this gateway's requests still waiting for a first byte there, the oldest
        one's age): a queue the model underestimates shows there."""
        return max(self.model_ttft(c, req) * c.model_bias(now), c.observed_ttft(now))

    def model_ttft(self, c: ClusterState, req: ClusterRequest | None = None) -> float:
        """The model's TTFT there: the request's idle TTFT (``base_ttft`` plus, for ``req``, the prefill
        of what is not cached there: ``miss_ttft``) x (1 + u), u its occupancy after this request (a
        prefill shares each engine step with the running decodes: about 2x the floor when full, as
        measured live), plus, past full, the wait for a slot: (u - 1) x ``slot_time`` (the requests past
        full, (u - 1) x slots, leave the queue at slots / slot_time per second)."""
        u = self.utilisation(c)
        idle = self.base_ttft(c) + (self.miss_ttft(c, req) if req is not None else 0.0)
        return idle * (1.0 + min(u, 1.0)) + self.queue_wait(c)

    def queue_wait(self, c: ClusterState) -> float:
        """The model's wait for a slot there past full, in seconds: (u - 1) x ``slot_time``; 0 below."""
        return max(0.0, self.utilisation(c) - 1.0) * self.slot_time(c)

    def miss_ttft(self, c: ClusterState, req: ClusterRequest) -> float:
        """Seconds the request's uncached prefix adds there at idle: the share of its leading blocks not
        in the cluster's Bloom summary x what a miss costs there (``miss_cost``); a cluster without a
        summary is charged a whole miss (nothing known there is cached: as it had no discount before),
        and a request without a full block none anywhere. Spilling a tenant away from the cluster that
        holds its prefix is charged the prefill it will redo, in the unit the queues are costed in."""
        cached = req.cached.get(c.name)
        if cached is None:
            if not req.prompt or not req.hashes(HOME_CHUNK):
                return 0.0
            cached = 0.0
        return (1.0 - cached) * self.miss_cost(c)

    def miss_cost(self, c: ClusterState) -> float:
        """What a prefix miss costs there at idle, in seconds: as measured (``ClusterState.miss_cost_s``),
        but never below the relative affinity discount it replaced, in seconds: a full hit costing
        (1 - affinity) x a miss at idle, a miss costs affinity / (1 - affinity) x the idle TTFT more (a
        measured 0, e.g. misses answered quiet and hits busy, must not make a warm cluster cost what a
        cold one does). Before a measurement that floor is the estimate, so clusters with and without a
        measured cost are compared in one unit (seconds at idle, x (1 + u) with the rest)."""
        a = min(max(self.w.affinity, 0.0), 0.9)
        floor = self.base_ttft(c) * a / (1.0 - a)
        m = c.miss_cost_s
        return floor if m is None else max(m, floor)

    def cached_share(self, c: ClusterState, req: ClusterRequest) -> float | None:
        """The share of the request's leading blocks in the cluster's Bloom summary; None without a summary
        or without a block to look up (no estimate, and no evidence of a miss's cost)."""
        a = c.aggregate
        if a is None or a.prefix_bloom is None or not a.prefix_chunk_chars or not req.prompt:
            return None
        if not req.hashes(a.prefix_chunk_chars):
            return None
        return self.affinity(c, req)

    def slot_time(self, c: ClusterState) -> float:
        """How long a request holds a slot there: its prefill (the idle TTFT) plus its decode as this
        gateway measured it (first byte to end). The queue past full drains at slots / this requests per
        second, so a request (u - 1) x slots deep waits (u - 1) x this. Before any measured decode: one
        prefill per request ahead per ready endpoint, slots / ready x the idle TTFT (a lower bound)."""
        return self._slot(c, self.base_ttft(c))

    def _slot(self, c: ClusterState, prefill: float) -> float:
        """The slot model for a given prefill: shared by ``slot_time`` and ``home_weight`` so the costs
        and the homes cannot drift apart."""
        a = c.aggregate
        assert a is not None
        if c.decode_s is not None:
            return prefill + c.decode_s
        return prefill * self.slots(c) / max(1, a.ready_endpoints)

    def affinity(self, c: ClusterState, req: ClusterRequest) -> float:
        a = c.aggregate
        if a is None or a.prefix_bloom is None or not a.prefix_chunk_chars or not req.prompt:
            return 0.0
        hashes = req.hashes(a.prefix_chunk_chars)
        if not hashes:
            return 0.0
        n = 0
        for h in hashes:
            if not a.prefix_bloom.contains(h):
                break
            n += 1
        return n / len(hashes)

    def home(self, clusters: Sequence[ClusterState], req: ClusterRequest) -> str | None:
        """The request's prefix home among ``clusters``: weighted rendezvous hashing of ``home_key`` (its
        first 256 chars: the tenant's context), each cluster weighted by the requests it serves per second
        when busy (``home_weight``: its slots over its slot time, a request's prefill plus its decode
        there as measured, less this gateway's RTT, in half-octave classes), so each cluster is home to
        the share of the traffic it can take. The key depends on the request alone, so a cluster's loss
        moves only its own tenants (to their next home)."""
        if len(clusters) < 2:
            return None
        key = home_key(req)
        if key is None:
            return None
        best, best_score = None, -1.0
        for c in clusters:
            weight = self.home_weight(c)
            score = weight / -math.log(_unit(xxh64_intdigest(key + c.name.encode())))
            if score > best_score:
                best, best_score = c.name, score
        return best

    def home_weight(self, c: ClusterState, hold: bool = True) -> float:
        """A cluster's home weight: its throughput when busy, slots over slot time, as ``slot_time`` but
        without this gateway's own round trip (``rtt_ms``, which another gateway does not share), in
        half-octave classes (2^(k/2)). Two gateways measure a cluster a little differently and a
        measurement drifts; within a class their homes agree and stay put. The class is held while the
        measurement stays within HOME_CLASS_HOLD half-octaves of its centre (hysteresis): live, a busy
        cluster's decode time swings +-20 % with its load (east 2.7-3.9 s in one steady phase), and a
        weight near a class boundary changed east's class 6 times in 32 s, each change moving its marginal
        tenants' homes back and forth. A cluster in slow start keeps its class: its returning snapshot
        (slot priors, empty caches) is what the slow start does not trust either. ``hold=False``: the
        weight ``home`` would use now, without holding its class (a read, ``GlobalRouter.summary``, must
        not change where requests go: review s8-mc B2)."""
        prefill = max(self.base_ttft(c) - c.spec.rtt_ms / 1000.0, MIN_PREFILL_S)
        x = 2.0 * math.log2(max(self.slots(c) / self._slot(c, prefill), 1e-9))
        k = self._home_class.get(c.name)
        if k is None or (c.ramp_window is None and abs(x - k) >= HOME_CLASS_HOLD):
            k = round(x)
            if hold:
                self._home_class[c.name] = k
        return float(2.0 ** (k / 2.0))

    def cost(self, c: ClusterState, req: ClusterRequest, now: float = 0.0, home: str | None = None) -> float:
        """The predicted TTFT there (seconds), discounted for what makes it cheaper than it looks: the
        local cluster, the request's prefix home. (A prefix cache hit is in the predicted TTFT: the miss
        of its uncached part is charged there, ``miss_ttft``.)"""
        w = self.w
        cost = self.predicted_ttft(c, now, req)
        if c.name == self.local:
            cost *= 1.0 - w.local_bonus
        if c.name == home:
            cost *= 1.0 - w.home_bonus
        return cost

    def order(self, clusters: Sequence[ClusterState], req: ClusterRequest, now: float) -> list[ClusterState]:
        good = [c for c in clusters if self.usable(c, now)]
        self._track_returns(clusters, good, now)
        self.calibrate_prior(good)
        req.cached = {}
        for c in good:
            share = self.cached_share(c, req)
            if share is not None:
                req.cached[c.name] = share
        # What a dispatch there judges its answer by: the model's prediction for this request over the
        # floor, once the cluster's speed is measured (its floor). Before, the model is the speed prior,
        # and the first answer replaces that with the floor: a prior's error is no evidence of the model's.
        req.model_load = {c.name: self.model_ttft(c, req) / c.ttft_floor_s for c in good if c.ttft_floor_s}
        # The queue part alone: an answer less the wait past full, over the factor, is its TTFT at idle,
        # what the miss cost is learnt from. The wait is added to the TTFT, so it is taken off, not
        # divided (dividing by the whole shrank the miss part with it: review s7-final-b A).
        req.queue_wait, req.queue_load = {}, {}
        for c in good:
            if c.ttft_floor_s:
                wait = req.queue_wait[c.name] = self.queue_wait(c)
                req.queue_load[c.name] = (self.model_ttft(c) - wait) / c.ttft_floor_s
        home = self.home(good, req)
        self.last_home = home
        costs = {c.name: self.cost(c, req, now, home) for c in good}
        self.last_costs = costs
        # A cluster in slow start with its window in use goes after every other good one (still before
        # the unknown ones: better there than refused).
        capped = [c for c in good if c.ramped_full(now, self.slots(c))]
        good = [c for c in good if c not in capped]
        good.sort(key=lambda c: costs[c.name])
        capped.sort(key=lambda c: costs[c.name])
        if len(good) >= 2:
            near = [c for c in good if costs[c.name] <= costs[good[0].name] * (1.0 + self.w.slack)]
            if len(near) >= 2:
                a, b = self.rng.sample(near, 2)
                first = a if costs[a.name] <= costs[b.name] else b
                good.remove(first)
                good.insert(0, first)
        good += capped
        if good:
            name = good[0].name
            self.first_to[name] = self.first_to.get(name, 0) + 1
            if home is not None and name != home:
                self.first_away[name] = self.first_away.get(name, 0) + 1

        # Then the unknown ones (stale, never fetched, backing off, EPP not serving), nearest first: a
        # request is better tried there than refused. A fresh snapshot with no ready endpoint is never tried.
        rest = [c for c in clusters if c not in good and not self.dead(c, now)]
        rest.sort(key=lambda c: (c.healthy is False or not c.available(now), c.spec.rtt_ms))
        return good + rest

    def dead(self, c: ClusterState, now: float) -> bool:
        """A fresh snapshot with no ready endpoint: never tried (``order`` names every other cluster)."""
        a = c.aggregate
        return a is not None and c.fresh(now, self.ttl_s) and a.ready_endpoints == 0

    def _track_returns(
        self, clusters: Sequence[ClusterState], good: Sequence[ClusterState], now: float
    ) -> None:
        """Slow start: a cluster seen usable, then not (stale, no ready endpoint, NOT_SERVING; a failure
        back-off alone does not count), starts a ramp when it is usable again (``ClusterState.start_ramp``):
        it comes back with cold caches and a snapshot that cannot show the queue a flood would build."""
        for c in clusters:
            if c in good:
                if c.gone:
                    c.start_ramp(now)
                c.gone = False
                c.seen_usable = True
            elif c.seen_usable and not self._snapshot_usable(c, now):
                c.gone = True

    def _snapshot_usable(self, c: ClusterState, now: float) -> bool:
        a = c.aggregate
        return c.healthy is not False and c.fresh(now, self.ttl_s) and a is not None and a.ready_endpoints > 0


def fresh_seed() -> int:
    """A seed from os.urandom: two gateway processes started alike must not make the same random picks
    (power of two among the best would then send their requests to the same cluster)."""
    return int.from_bytes(os.urandom(8), "big")


def make_policy(
    name: str,
    *,
    ttl_s: float = 3.0,
    local: str | None = None,
    seed: int | None = None,
    weights: KvgateWeights | None = None,
) -> Policy:
    """``seed``: the kvgate policy's randomness (power of two among the best); None draws one from
    os.urandom (:func:`fresh_seed`); tests and the fleet simulator pass one."""
    rng = random.Random(fresh_seed() if seed is None else seed)
    factories: dict[str, Callable[[], Policy]] = {
        "round-robin": RoundRobin,
        "active-passive": ActivePassive,
        "llm-d-hub": LlmdHub,
        "kvgate": lambda: KvgatePolicy(ttl_s=ttl_s, local=local, weights=weights, rng=rng),
    }
    if name not in factories:
        raise ValueError(f"unknown cluster policy {name!r}; known: {', '.join(POLICIES)}")
    return factories[name]()
