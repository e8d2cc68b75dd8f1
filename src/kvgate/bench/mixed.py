"""A mixed workload kvgate was not tuned for, in families, with tuning and validation sets.

Each family mixes three kinds of traffic on a fleet whose KV cache cannot hold every tenant everywhere:
- **chat sessions** whose context grows every turn (system prompt + every earlier question and answer
  + the new question), the next turn sent a think time after the previous one;
- **bursts**: 12 requests of one tenant (a long shared prefix + a short question) landing together;
- **decode-heavy one-offs**: short prompts, long outputs, no shared prefix.

The families differ in every length, in the mix and in the cache size, so a profile tuned on one
family is tested on shapes it has not seen: the **tuning set** is family ``a`` with seeds 1-3; the
**validation set** is families ``b`` and ``c`` with seeds 101-103, never used while tuning.

Arrival times are fixed when the workload is generated (open loop: a session's next turn is sent a
think time after its previous send plus ``turn_gap``, whatever the fleet does), so every policy sees
the same requests at the same times. ``qps`` scales every class's rate together.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from kvgate.bench.fleetsim import ReplicaSpec
from kvgate.bench.workloads import RequestSpec, random_ids

BURST_SIZE = 12
TUNING_SEEDS = (1, 2, 3)
VALIDATION_SEEDS = (101, 102, 103)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    # share of requests per class (sum 1)
    share_session: float
    share_burst: float
    share_oneoff: float
    # chat sessions
    system_len: tuple[int, int]  # uniform range, tokens
    user_len: tuple[int, int]
    answer_len: tuple[int, int]
    turns: tuple[int, int]
    think_s: float  # mean of an exponential think time
    # bursts: tenants x shared prefix
    tenants: int
    tenant_prefix: int
    burst_question: int
    burst_output: int
    # decode-heavy one-offs
    oneoff_prompt: tuple[int, int]
    oneoff_output: tuple[int, int]
    # fleet: 4 x Qwen3-32B on H200 with a KV cache cut to this many 16-token blocks
    kv_blocks: int
    replicas: int = 4
    profile: str = "qwen3-32b-h200"
    turn_gap: float = 1.5  # seconds added to the think time (a typical response time)

    def fleet(self) -> list[ReplicaSpec]:
        return [ReplicaSpec(self.profile, self.replicas, {"num_gpu_blocks": self.kv_blocks})]

    @property
    def mean_turns(self) -> float:
        return (self.turns[0] + self.turns[1]) / 2


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        # tuning family
        Family(
            "a",
            share_session=0.5,
            share_burst=0.3,
            share_oneoff=0.2,
            system_len=(800, 2000),
            user_len=(50, 250),
            answer_len=(100, 300),
            turns=(4, 10),
            think_s=8.0,
            tenants=8,
            tenant_prefix=2048,
            burst_question=150,
            burst_output=100,
            oneoff_prompt=(100, 400),
            oneoff_output=(600, 1200),
            kv_blocks=2500,  # 40k tokens per replica
        ),
        # validation families (never tuned on)
        Family(
            "b",
            share_session=0.4,
            share_burst=0.4,
            share_oneoff=0.2,
            system_len=(2000, 4000),
            user_len=(20, 120),
            answer_len=(50, 200),
            turns=(2, 6),
            think_s=4.0,
            tenants=16,
            tenant_prefix=1024,
            burst_question=300,
            burst_output=60,
            oneoff_prompt=(50, 200),
            oneoff_output=(300, 800),
            kv_blocks=2000,  # 32k tokens
        ),
        Family(
            "c",
            share_session=0.6,
            share_burst=0.2,
            share_oneoff=0.2,
            system_len=(300, 800),
            user_len=(100, 400),
            answer_len=(200, 500),
            turns=(8, 20),
            think_s=12.0,
            tenants=4,
            tenant_prefix=4096,
            burst_question=100,
            burst_output=150,
            oneoff_prompt=(200, 600),
            oneoff_output=(800, 1600),
            kv_blocks=3000,  # 48k tokens
        ),
    ]
}
TUNING_SET = [("a", s) for s in TUNING_SEEDS]
VALIDATION_SET = [(f, s) for f in ("b", "c") for s in VALIDATION_SEEDS]


def _exp(rng: random.Random, rate: float) -> float:
    return -math.log(1.0 - rng.random()) / rate


def _uni(rng: random.Random, r: tuple[int, int]) -> int:
    return rng.randint(r[0], r[1])


def mixed_workload(
    fam: Family, *, qps: float, horizon: float, seed: int, model: str = "sim-model"
) -> Iterator[RequestSpec]:
    """Every request sent in ``[0, horizon)`` seconds, in send order (``spec.at`` set)."""
    rng = random.Random(seed * 1_000_003 + ord(fam.name))
    out: list[tuple[float, int, RequestSpec]] = []
    n = 0

    def push(at: float, spec: RequestSpec) -> None:
        nonlocal n
        spec.at = at
        out.append((at, n, spec))
        n += 1

    # Chat sessions: start as a Poisson process; each turn resends the whole conversation.
    start_rate = qps * fam.share_session / fam.mean_turns
    t, s = 0.0, 0
    while start_rate > 0:
        t += _exp(rng, start_rate)
        if t >= horizon:
            break
        ctx = random_ids(rng, _uni(rng, fam.system_len))
        at = t
        for _ in range(_uni(rng, fam.turns)):
            if at >= horizon:
                break
            ctx = ctx + random_ids(rng, _uni(rng, fam.user_len))
            answer = _uni(rng, fam.answer_len)
            push(
                at, RequestSpec(list(ctx), answer, model=model, group=f"s{s}", session=f"session-{seed}-{s}")
            )
            # The assistant's answer joins the context (synthetic ids: the next turn is fixed in advance).
            ctx = ctx + random_ids(rng, answer)
            at += fam.turn_gap + _exp(rng, 1.0 / fam.think_s)
        s += 1
    # Bursts of one tenant's requests.
    prefixes = [random_ids(rng, fam.tenant_prefix) for _ in range(fam.tenants)]
    burst_rate = qps * fam.share_burst / BURST_SIZE
    t = 0.0
    while burst_rate > 0:
        t += _exp(rng, burst_rate)
        if t >= horizon:
            break
        g = rng.randrange(fam.tenants)
        for _ in range(BURST_SIZE):
            ids = prefixes[g] + random_ids(rng, fam.burst_question)
            push(t + rng.random() * 0.05, RequestSpec(ids, fam.burst_output, model=model, group=f"t{g}"))
    # Decode-heavy one-offs.
    rate = qps * fam.share_oneoff
    t = 0.0
    while rate > 0:
        t += _exp(rng, rate)
        if t >= horizon:
            break
        ids = random_ids(rng, _uni(rng, fam.oneoff_prompt))
        push(t, RequestSpec(ids, _uni(rng, fam.oneoff_output), model=model, group="oneoff"))
    heapq.heapify(out)
    while out:
        yield heapq.heappop(out)[2]
