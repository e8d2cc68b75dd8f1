"""Routing experiments against real vLLM servers: kvgate gateways in a background loop, workloads, hit rates.

The hit rate is the servers' own: deltas of ``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total``
summed over the fleet, with every server's prefix cache reset (``POST /reset_prefix_cache``) before a run, so
each policy starts cold on the same request sequence.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kvgate.realvllm.harness import MODEL_NAME, VLLMServer, prefix_cache_counters

T = TypeVar("T")

# Same profile as the reference policy (queue 2, KV 2, prefix 3) with the prefix scorer swapped, so
# "precise vs approximate" differs only in where the prefix knowledge comes from.
APPROXIMATE: dict[str, Any] = {
    "plugins": [
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "prefix-cache-scorer"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "queue-scorer", "weight": 2},
                {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                {"pluginRef": "prefix-cache-scorer", "weight": 3},
            ],
        }
    ],
}


def precise_config(index_name: str, **params: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(APPROXIMATE))
    cfg["plugins"][2] = {
        "type": "precise-prefix-cache-scorer",
        "name": "prefix-cache-scorer",
        "parameters": {"indexName": index_name, **params},
    }
    return cfg


class LoopThread:
    """An asyncio loop in a daemon thread: gateways and KV-event subscribers live here across tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kvgate-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        async def _call() -> T:
            return fn()

        return self.run(_call(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class Gateway:
    """A real ``GatewayServer`` (aiohttp, port 0 on 127.0.0.1) over the given endpoints."""

    def __init__(
        self, lt: LoopThread, endpoints: Sequence[str], policy: str | dict[str, Any], seed: int | None = None
    ) -> None:
        from kvgate.config.gateway import GatewayConfig, PoolConfig
        from kvgate.gateway.server import GatewayServer

        picker_config = policy if isinstance(policy, dict) else None
        name = policy if isinstance(policy, str) else "kvgate"
        pool = PoolConfig("realvllm", list(endpoints), [MODEL_NAME], policy=name, picker_config=picker_config)
        self.lt = lt
        cfg = GatewayConfig(pools=[pool], port=0)

        async def _make() -> GatewayServer:
            # Built inside the loop: plugins may start their KV-event subscribers on it.
            if seed is None:
                srv = GatewayServer(cfg)
            else:
                # A seeded Director: tie-breaks (where new prefixes land) repeat from run to run.
                from kvgate.config.director import build_director
                from kvgate.config.policies import policy_config
                from kvgate.gateway.pools import Pool, make_store

                store = make_store(pool)
                director = build_director(picker_config or policy_config(name), store, seed=seed)
                srv = GatewayServer(cfg, pools=[Pool(pool.name, pool, store, director)])
            await srv.start()
            return srv

        self.server = lt.run(_make())
        self.url = f"http://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.lt.run(self.server.stop(drain_timeout=5.0))


def completion(base_url: str, prompt: Sequence[int] | str, max_tokens: int = 4, timeout: float = 120) -> Any:
    body = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
    }
    req = urllib.request.Request(
        base_url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Workload:
    """A shared-prefix request sequence (token ids): system prompts, each reused by several users."""

    prompts: list[list[int]]
    group_of: list[int]
    # Requests sent straight to one server, around the gateway (another gateway replica, a batch job):
    # (index in the sequence before which to send, server index, prompt).
    side_traffic: list[tuple[int, int, list[int]]] = field(default_factory=list)


def shared_prefix(
    groups: int,
    per_group: int,
    prefix_tokens: int,
    suffix_tokens: int,
    seed: int = 0,
    vocab: int = 2000,
) -> Workload:
    rng = random.Random(seed)
    lo = 10  # above the tokenizer's special ids
    prefixes = [[rng.randrange(lo, vocab) for _ in range(prefix_tokens)] for _ in range(groups)]
    order = [g for g in range(groups) for _ in range(per_group)]
    rng.shuffle(order)
    prompts = [prefixes[g] + [rng.randrange(lo, vocab) for _ in range(suffix_tokens)] for g in order]
    return Workload(prompts, order)


def with_side_traffic(
    w: Workload, server: int, every: int, tokens: int, seed: int = 1, vocab: int = 2000
) -> Workload:
    """Add a unique long prompt sent directly to ``server`` before every ``every``-th request."""
    rng = random.Random(seed)
    side = [
        (i, server, [rng.randrange(10, vocab) for _ in range(tokens)])
        for i in range(0, len(w.prompts), every)
    ]
    return Workload(w.prompts, w.group_of, side)


@dataclass
class RunResult:
    policy: str
    queries: float
    hits: float
    gateway_queries: float
    gateway_hits: float
    seconds: float

    @property
    def hit_rate(self) -> float:
        """Over the gateway's requests only (side traffic excluded)."""
        return self.gateway_hits / self.gateway_queries if self.gateway_queries else 0.0


def _counters(servers: Sequence[VLLMServer]) -> list[tuple[float, float]]:
    return [prefix_cache_counters(s.metrics_text()) for s in servers]


def reset_caches(servers: Sequence[VLLMServer]) -> None:
    """Empty every server's prefix cache, and give each engine one step: vLLM publishes the reset's
    ``AllBlocksCleared`` KV event only with its next step, and until then an event-fed index still
    holds the previous run's blocks. (20 tokens fill no block: the step caches nothing.)"""
    for s in servers:
        s.post("/reset_prefix_cache")
        completion(s.url, [7] * 20, max_tokens=1)


def wait_quiet(count: Callable[[], int], quiet: float = 0.1, timeout: float = 30.0) -> None:
    """Wait until ``count()`` (e.g. KV-event batches received) has not changed for ``quiet`` seconds.

    Requests here are sequential, so between two of them the engines are idle: once their event streams
    fall quiet, an event-fed index reflects everything they did. A fixed sleep does not, on a loaded
    machine. Raises ``TimeoutError`` if the count keeps changing for ``timeout`` seconds.
    """
    end = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while True:
        time.sleep(0.02)
        now, n = time.monotonic(), count()
        if n != last:
            last, since = n, now
        elif now - since >= quiet:
            return
        if now > end:
            raise TimeoutError(f"KV events still arriving after {timeout}s")


def run_workload(
    servers: Sequence[VLLMServer],
    gateway_url: str,
    w: Workload,
    policy: str,
    *,
    max_tokens: int = 4,
    settle: Callable[[], Awaitable[None]] | Callable[[], None] | None = None,
    concurrency: int = 1,
) -> RunResult:
    """Send the sequence (in order, ``concurrency`` at a time) and measure the fleet's prefix-cache hits.

    Side-traffic requests are sent directly and their own counters are subtracted, so the hit rate is over
    the gateway's requests. ``settle`` runs after the caches are reset and after each request (e.g. wait
    for KV events to land).
    """
    reset_caches(servers)
    if settle is not None:
        settle()
    side_at: dict[int, list[tuple[int, list[int]]]] = {}
    for i, sidx, prompt in w.side_traffic:
        side_at.setdefault(i, []).append((sidx, prompt))
    t0 = time.monotonic()
    gq = gh = 0.0
    start = _counters(servers)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        i = 0
        while i < len(w.prompts):
            for sidx, prompt in side_at.get(i, []):
                before = _counters(servers)
                completion(servers[sidx].url, prompt, max_tokens)
                after = _counters(servers)
                gq -= sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
                gh -= sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
                if settle is not None:
                    settle()
            batch = w.prompts[i : i + concurrency]
            list(pool.map(lambda p: completion(gateway_url, p, max_tokens), batch))
            if settle is not None:
                settle()
            i += len(batch)
    finally:
        pool.shutdown()
    end = _counters(servers)
    q = sum(e[0] - s[0] for e, s in zip(end, start, strict=True))
    h = sum(e[1] - s[1] for e, s in zip(end, start, strict=True))
    return RunResult(policy, q, h, q + gq, h + gh, time.monotonic() - t0)


# --- simulator fidelity ---------------------------------------------------------------------------


def real_hits(server: VLLMServer, prompts: Sequence[Sequence[int]], max_tokens: int = 4) -> list[int]:
    """Prefix-cache hit tokens per request on one real server (sequential, so counter deltas are exact)."""
    server.post("/reset_prefix_cache")
    out: list[int] = []
    for p in prompts:
        _, h0 = prefix_cache_counters(server.metrics_text())
        completion(server.url, list(p), max_tokens)
        _, h1 = prefix_cache_counters(server.metrics_text())
        out.append(int(h1 - h0))
    return out


def sim_hits(
    prompts: Sequence[Sequence[int]],
    *,
    block_size: int,
    num_gpu_blocks: int,
    max_model_len: int,
    max_tokens: int = 4,
) -> list[int]:
    """The same sequence on kvgate's simulated engine: ``num_cached_tokens`` per request.

    ``num_gpu_blocks`` should be the real server's minus one: vLLM keeps one block as its null block.
    """
    from kvgate.sim.engine import Engine, EngineConfig
    from kvgate.sim.types import SimRequest

    eng = Engine(
        EngineConfig(block_size=block_size, num_gpu_blocks=num_gpu_blocks, max_model_len=max_model_len)
    )
    now = 0.0
    out: list[int] = []
    for i, p in enumerate(prompts):
        req = SimRequest(f"r{i}", list(p), max_tokens=max_tokens)
        eng.add_request(req, now)
        while eng.has_work():
            now += eng.step(now).duration
        out.append(req.num_cached_tokens)
    return out


def fidelity_sequence(seed: int = 11, block: int = 128) -> list[list[int]]:
    """Shared prefixes on one server, interleaved with long unique prompts that force evictions."""
    w = with_side_traffic(
        shared_prefix(groups=5, per_group=4, prefix_tokens=4 * block, suffix_tokens=40, seed=seed),
        server=0,
        every=3,
        tokens=14 * block + 10,
        seed=seed + 1,
    )
    seq: list[list[int]] = []
    side = {i: p for i, _, p in w.side_traffic}
    for i, p in enumerate(w.prompts):
        if i in side:
            seq.append(side[i])
        seq.append(p)
    return seq
