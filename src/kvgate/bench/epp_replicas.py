"""`kvgate bench epp-replicas`: prefix-cache hit rate with one EPP vs two active-active EPP replicas.

Active-active (every EPP replica ready, the gateway spreading ext_proc streams over them) splits what
each replica learns from its own picks: the approximate prefix index and the in-flight counts. This
measures what that costs on a prefix-heavy multi-turn workload: simulated vLLM replicas (real HTTP, their
own prefix caches), real EPP servers over gRPC, an Envoy stand-in that sends each request's ext_proc
stream to one EPP replica (at random, as a Service spreads connections) and forwards to the picked
endpoint. The hit rate is what the engines report: the sum of ``usage.prompt_tokens_details
.cached_tokens`` over the sum of ``prompt_tokens``. Baselines in the same run: one EPP (the upper
reference) and round robin (no affinity at all).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass

import aiohttp
import orjson

from kvgate.entry import ArgumentParser, nonneg_int, nonneg_number, positive_int, positive_number, prog


@dataclass
class Result:
    name: str
    replicas: int
    policy: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    failed: int
    seconds: float

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


async def _run(
    name: str,
    replicas: int,
    policy: str,
    ns: argparse.Namespace,
) -> Result:
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.datalayer.store import EndpointStore
    from kvgate.extproc.context import AddressIndex, build_epp_director
    from kvgate.extproc.server import EppServer, ServerOptions
    from kvgate.extproc.session import SessionContext
    from kvgate.extproc.testing import EnvoyHarness, channel
    from kvgate.sim.server import Replica, ReplicaConfig

    sims = [
        Replica(
            ReplicaConfig(model="sim-model", time_scale=ns.time_scale, seed=i, num_gpu_blocks=ns.kv_blocks),
            index=i,
        )
        for i in range(ns.engines)
    ]
    for s in sims:
        await s.start()
    addresses = [f"127.0.0.1:{s.port}" for s in sims]
    epps: list[tuple[EppServer, MetricsScraper]] = []
    channels = []
    try:
        for _ in range(replicas):
            # Each replica: its own store, scraper, Director (prefix index, in-flight), as in a pod.
            store = EndpointStore.from_addresses(addresses)
            director = build_epp_director(None, store, policy=policy)
            ctx = SessionContext(director, AddressIndex(store), clock=time.monotonic)
            server = EppServer(
                ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None)
            )
            scraper = MetricsScraper(store, interval=0.05)
            await scraper.start()
            await server.start()
            epps.append((server, scraper))
        channels = [channel(f"127.0.0.1:{server.port}") for server, _ in epps]
        async with aiohttp.ClientSession() as http:
            harnesses = [EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http) for ch in channels]
            totals = {"prompt": 0, "cached": 0, "n": 0, "failed": 0}
            sem = asyncio.Semaphore(ns.concurrency)

            async def session(sid: int) -> None:
                # Each session's own draws (think times, the EPP replica per turn), so that they do not
                # depend on the order the sessions happen to reach them in (qa36c F3: one shared RNG
                # handed the same seed's draws out in a timing-dependent order).
                rng = random.Random(ns.seed * 1_000_003 + sid)
                # A long per-session system prompt, then turns that extend the conversation.
                system = f"Session {sid} instructions: " + " ".join(
                    f"rule{sid}-{k}" for k in range(ns.prefix_words)
                )
                history: list[dict[str, str]] = [{"role": "system", "content": system}]
                for turn in range(ns.turns):
                    # A user's think time: without it the sessions move in lockstep and round robin
                    # (sessions a multiple of the engines) would send every turn to the same engine.
                    await asyncio.sleep(rng.random() * ns.think_s)
                    history.append(
                        {"role": "user", "content": f"question {turn} of session {sid}, please answer"}
                    )
                    body = {"model": "sim-model", "max_tokens": ns.max_tokens, "messages": history}
                    async with sem:
                        harness = harnesses[rng.randrange(len(harnesses))]
                        res = await harness.request("POST", "/v1/chat/completions", orjson.dumps(body))
                    totals["n"] += 1
                    if res.status != 200:
                        totals["failed"] += 1
                        continue
                    out = orjson.loads(res.body)
                    usage = out.get("usage") or {}
                    totals["prompt"] += int(usage.get("prompt_tokens") or 0)
                    totals["cached"] += int(
                        (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                    )
                    history.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})

            t0 = time.monotonic()
            await asyncio.gather(*(session(s) for s in range(ns.sessions)))
            seconds = time.monotonic() - t0
    finally:
        # With a grace the server's GOAWAY is the graceful one (every stream is done: it returns at once);
        # stop(0) cancelled the transports with GOAWAY INTERNAL_ERROR ("Cancelling all calls"), which
        # gRPC core logged to stderr as "Got goaway" lines before the table (qa36c F11).
        for server, scraper in epps:
            await server.stop(1.0)
            await scraper.stop()
        for ch in channels:
            await ch.close()
        for s in sims:
            await s.stop()
    return Result(
        name, replicas, policy, totals["n"], totals["prompt"], totals["cached"], totals["failed"], seconds
    )


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=prog("kvgate.bench.epp_replicas", "bench epp-replicas"), description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--engines", type=positive_int, default=8, help="simulated vLLM replicas")
    p.add_argument("--sessions", type=positive_int, default=32, help="multi-turn conversations")
    p.add_argument("--turns", type=positive_int, default=8, help="requests per conversation")
    p.add_argument(
        "--prefix-words", type=nonneg_int, default=200, help="words in each session's system prompt"
    )
    p.add_argument(
        "--max-tokens", type=positive_int, default=64, help="answer length (the history grows by it)"
    )
    p.add_argument(
        "--kv-blocks", type=nonneg_int, default=600,
        help="KV blocks per engine (16 tokens each): room for a few sessions, so scattering them evicts",
    )  # fmt: skip
    p.add_argument("--concurrency", type=positive_int, default=8)
    p.add_argument(
        "--think-s", type=nonneg_number, default=0.2, help="random pause before each turn, up to this"
    )
    p.add_argument("--time-scale", type=positive_number, default=20.0, help="simulator speed-up")
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="seeds per configuration (the spread is shown)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer sessions and one repeat")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if ns.quick:
        ns.sessions, ns.repeats = 12, 1
    configs = [
        ("one EPP", 1, "kvgate"),
        ("two EPPs, active-active", 2, "kvgate"),
        ("round robin", 1, "round-robin"),
    ]
    rows: list[list[Result]] = []
    for name, replicas, policy in configs:
        runs = []
        for r in range(ns.repeats):
            run_ns = argparse.Namespace(**{**vars(ns), "seed": ns.seed + r})
            runs.append(asyncio.run(_run(name, replicas, policy, run_ns)))
        rows.append(runs)
    base = sum(r.hit_rate for r in rows[0]) / len(rows[0])
    print(f"kvgate bench epp-replicas: {ns.engines} simulated vLLM engines ({ns.kv_blocks} KV blocks each), "
          f"{ns.sessions} sessions x {ns.turns} turns, concurrency {ns.concurrency}, {ns.repeats} seed(s); "
          "prefix hit rate = cached / prompt tokens")  # fmt: skip
    print(
        f"{'configuration':<26} {'policy':<12} {'hit rate (per seed)':<28} {'mean':>7} "
        f"{'vs one EPP':>10} {'failed':>7}"
    )
    for runs in rows:
        rates = [r.hit_rate for r in runs]
        mean = sum(rates) / len(rates)
        per = ", ".join(f"{x:.1%}" for x in rates)
        ratio = mean / base if base else 0.0
        failed = sum(r.failed for r in runs)
        print(f"{runs[0].name:<26} {runs[0].policy:<12} {per:<28} {mean:>7.1%} {ratio:>10.3f} {failed:>7}")
    return 0 if all(r.failed == 0 for runs in rows for r in runs) else 1


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
