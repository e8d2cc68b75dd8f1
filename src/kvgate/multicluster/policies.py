"""Cluster selection policies: each orders the clusters for one request (first = chosen, the rest = failover).

- ``round-robin``: rotate, blind to load and health (only a failed cluster's back-off is skipped).
- ``active-passive``: the lowest ``priority`` whose EPP reports SERVING over gRPC health; the rest in order.
- ``llm-d-hub``: as llm-d's alpha hub plugins: score = (1 - average KV) + min-max-normalised queue
  (lowest average queue = 1), highest first; whatever snapshot it last saw, however old (no staleness
  check, no health filter), and a cluster never heard from scores as idle.
- ``kvgate``: health-gated (fresh snapshot within the TTL, EPP not NOT_SERVING, at least one ready endpoint:
  unknown is never zero load, zero ready endpoints never chosen); cost = the cluster's load after this
  request, the larger of two measures of it:
  - occupancy: requests there over the requests it holds when full (the snapshot's ``request_slots``, from
    what its engines report of their KV caches): what the snapshot shows in use (``capacity -
    headroom``), plus the queue its headroom cannot show once full, plus what this gateway sent since the
    snapshot (past full each queued request counts one slot, no extra penalty: its wait is measured);
  - the TTFT evidence: a cluster whose TTFT is k x the best cluster's answers like the best one would at
    utilisation 1 - 1/k (a queue's wait grows as 1 / (1 - u)). The evidence is the recent EWMA of answered
    requests, fading to the cluster's TTFT floor (its measured speed, whatever its GPU labels say), and
    requests still waiting for their first byte counted at their age (a lower bound); scale-free, so it
    means the same at 50 ms and at 2 s TTFTs;
  plus an RTT term; a local bonus while the local cluster has room (spill-over), and a prefix-affinity
  bonus when the request's leading blocks are in the cluster's Bloom summary; then power-of-two choices
  among the clusters within ``slack`` of the best (no herding between refreshes, nor between gateways
  sharing a snapshot). Unknown clusters are tried only after every known-good one (ordered by RTT), so a
  request is not lost when all snapshots are stale.
"""

from __future__ import annotations

import os
import random
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvgate.datalayer.aggregate import MAX_BATCH
from kvgate.multicluster.state import ClusterState
from kvgate.scheduling.prefix import block_hashes

POLICIES = ("kvgate", "llm-d-hub", "round-robin", "active-passive")


@dataclass(slots=True)
class ClusterRequest:
    """What a policy may know about a request: its model and prompt (for prefix affinity)."""

    model: str = ""
    prompt: str | bytes | None = None
    stream: bool = False  # a streamed response: its first byte is the TTFT evidence the policy learns from
    _hashes: dict[int, list[int]] = field(default_factory=dict)

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
    rtt_per_s: float = 2.0  # cost per second of round trip (80 ms -> 0.16 of utilisation)
    local_bonus: float = 0.15  # preference for the local cluster ...
    spill_at: float = 0.85  # ... while its utilisation after this request stays below this
    affinity: float = 0.25  # bonus for a cluster whose Bloom summary holds all the request's leading blocks
    affinity_max_util: float = 0.9  # no affinity bonus past this utilisation (a hot prefix must not overload)
    slack: float = 0.08  # power of two among clusters within this much of the best cost


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
        """The capacity one request takes there: capacity over the requests the cluster holds when full."""
        a = c.aggregate
        assert a is not None
        if a.request_slots > 0:
            return a.capacity / a.request_slots
        return self.per_request

    def utilisation(self, c: ClusterState) -> float:
        """Load after this request / capacity. Headroom stops at zero when the cluster is full, so the
        queue past that point is added from the snapshot's queue length (what the headroom could not
        absorb): a full cluster with a longer queue costs more."""
        a = c.aggregate
        assert a is not None
        share = self.request_share(c)
        queued = a.average_queue_size * a.ready_endpoints * share
        used = a.capacity - a.headroom + max(0.0, queued - a.headroom)
        used += (c.sent_since_snapshot + 1) * share
        return used / a.capacity

    @staticmethod
    def reference_ttft(clusters: Sequence[ClusterState]) -> float | None:
        """The best answered TTFT among the candidates (the EWMA, unfaded): the scale of the TTFT term.
        Censored waits are lower bounds, so they never set the reference."""
        seen = [c.ttft_s for c in clusters if c.ttft_s is not None and c.ttft_s > 0]
        return min(seen) if seen else None

    @staticmethod
    def ttft_load(c: ClusterState, now: float, ref: float | None) -> float:
        """The utilisation at which the best cluster would answer as slowly as this one: 1 - 1/k for TTFT
        evidence k x the best's (0 when as fast, or nothing to compare)."""
        if ref is None:
            return 0.0
        k = c.observed_ttft(now) / ref
        return 1.0 - 1.0 / k if k > 1.0 else 0.0

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

    def cost(
        self, c: ClusterState, req: ClusterRequest, now: float = 0.0, ref_ttft: float | None = None
    ) -> float:
        w = self.w
        occupancy = self.utilisation(c)
        u = max(occupancy, self.ttft_load(c, now, ref_ttft))
        # Past full, each queued request adds one slot's share (occupancy) and its wait shows in the TTFT
        # evidence (censored waits, the floor times the prefill queue): no extra multiplier on top, which
        # would outweigh the RTT term (a full local cluster vs an idle one 10x slower and 75 ms further).
        cost = u + c.spec.rtt_ms / 1000.0 * w.rtt_per_s
        if c.name == self.local and u < w.spill_at:
            cost -= w.local_bonus
        if u < w.affinity_max_util:
            cost -= w.affinity * self.affinity(c, req)
        return cost

    def order(self, clusters: Sequence[ClusterState], req: ClusterRequest, now: float) -> list[ClusterState]:
        good = [c for c in clusters if self.usable(c, now)]
        ref = self.reference_ttft(good)
        costs = {c.name: self.cost(c, req, now, ref) for c in good}
        self.last_costs = costs
        good.sort(key=lambda c: costs[c.name])
        if len(good) >= 2:
            near = [c for c in good if costs[c.name] <= costs[good[0].name] + self.w.slack]
            if len(near) >= 2:
                a, b = self.rng.sample(near, 2)
                first = a if costs[a.name] <= costs[b.name] else b
                good.remove(first)
                good.insert(0, first)

        # Then the unknown ones (stale, never fetched, backing off, EPP not serving), nearest first: a
        # request is better tried there than refused. A fresh snapshot with no ready endpoint is never tried.
        def dead(c: ClusterState) -> bool:
            a = c.aggregate
            return a is not None and c.fresh(now, self.ttl_s) and a.ready_endpoints == 0

        rest = [c for c in clusters if c not in good and not dead(c)]
        rest.sort(key=lambda c: (c.healthy is False or not c.available(now), c.spec.rtt_ms))
        return good + rest


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
