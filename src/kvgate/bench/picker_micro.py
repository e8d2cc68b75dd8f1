"""Picker micro-benchmarks (a benchmark, not a test): ``python -m kvgate.bench.picker_micro``.

Sections (``--section``, default all):
- ``pick``: decision latency p50/p99 of ``Director.pick`` for 8 / 64 / 512 endpoints and 1 KB / 4 KB /
  16 KB / 220 KB prompts, kvgate vs reference profiles (plus round-robin as a floor), on a warmed prefix
  index (prompts drawn from shared system prompts + unique questions) and fresh random metrics.
- ``memory``: the prefix index filled to its global cap, measured with tracemalloc.
- ``scrape``: CPU of one scrape round over N endpoints serving a realistic simulated vLLM ``/metrics``
  page on loopback (servers in a child process, so only the scraper's CPU is counted), and the parse
  cost alone vs ``prometheus_client``'s parser (the baseline, measured in the same run).
- ``long``: ``Director.pick`` CPU on 8k / 16k / 32k-token prompts, 4 / 8 / 16 endpoints, cold and warm
  index, for the precise (KV-event) prefix scorer at match caps 256 and 2,048 and the approximate scorer
  (the baseline, same run); then the precise scorer's pending store memory per key.
- ``keys``: hashing one prompt's blocks up to the 2,048-block cap per key mode (``tokens``, engine
  ``sha256``, engine ``sha256_cbor``).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import os
import platform
import random
import time
import timeit
import tracemalloc
from array import array
from collections.abc import Sequence
from functools import partial
from typing import Any

from kvgate import lifeline
from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.entry import ArgumentParser, positive_int, prog
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.prefix import DEFAULT_MAX_TOTAL_BLOCKS
from kvgate.scheduling.types import InferenceRequest

SIZES = {"1KB": 1024, "4KB": 4096, "16KB": 16 * 1024, "220KB": 220 * 1024}


def _fleet(n: int, rng: random.Random) -> EndpointStore:
    store = EndpointStore()
    for i in range(n):
        m = EndpointMetrics(
            waiting_queue_size=rng.randint(0, 6),
            running_requests=rng.randint(0, 30),
            kv_cache_usage=rng.random() * 0.9,
            block_size=16,
            num_gpu_blocks=27_000,
            updated_at=0.0,
        )
        store.add(Endpoint(address=f"10.{i // 250}.{i % 250}.1:8000", metrics=m))
    return store


def _prompts(size: int, rng: random.Random, n: int, groups: int = 32) -> list[str]:
    systems = [
        (f"System prompt {g}: " + "".join(rng.choice("abcdefghij klmnop") for _ in range(512)))
        * (size // 512 + 1)
        for g in range(groups)
    ]
    out = []
    for i in range(n):
        base = systems[rng.randrange(groups)][: int(size * 0.8)]
        out.append(base + f" question {i}: " + "x" * (size - len(base) - 20))
    return out


def _percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_pick(
    policy: str, n_eps: int, size: int, picks: int, seed: int = 0
) -> tuple[float, float, float, float]:
    """(wall p50, wall p99, CPU p50, CPU p99) in microseconds. CPU time is the thread's own
    (CLOCK_THREAD_CPUTIME_ID): on a shared machine the wall figures include time other processes ran."""
    rng = random.Random(seed)
    store = _fleet(n_eps, rng)
    d = build_director(policy, store, clock=lambda: 0.0, seed=seed)
    prompts = _prompts(size, rng, 256)
    # Warm the prefix index and the in-flight accounting (untimed), keeping ~2 requests per endpoint open.
    open_reqs: list[tuple[InferenceRequest, Endpoint]] = []
    for i in range(max(500, 2 * n_eps)):
        r = InferenceRequest(f"w{i}", "llama", prompt_text=prompts[i % len(prompts)], max_tokens=128)
        ep = d.pick(r).primary
        d.on_dispatched(r, ep)
        open_reqs.append((r, ep))
        if len(open_reqs) > 2 * n_eps:
            r0, e0 = open_reqs.pop(0)
            d.on_finished(r0, e0, None, True)
    wall: list[float] = []
    cpu: list[float] = []
    reqs = [
        InferenceRequest(f"b{i}", "llama", prompt_text=prompts[rng.randrange(len(prompts))], max_tokens=128)
        for i in range(picks)
    ]
    gc.collect()
    gc.disable()
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    try:
        for r in reqs:
            c0, t0 = cpu_clock(), clock()
            d.pick(r)
            t1, c1 = clock(), cpu_clock()
            wall.append((t1 - t0) / 1000.0)
            cpu.append((c1 - c0) / 1000.0)
    finally:
        gc.enable()
    q = _percentile
    return q(wall, 0.5), q(wall, 0.99), q(cpu, 0.5), q(cpu, 0.99)


def section_pick(quick: bool) -> None:
    print("## Decision latency (Director.pick, microseconds; warmed index, 32 shared prefixes)")
    print("wall = perf_counter around each pick; cpu = the thread's CPU time for it (robust to other load)")
    cols = ("wall p50", "wall p99", "cpu p50", "cpu p99")
    print(f"{'endpoints':>9} {'prompt':>6} {'policy':>12} " + " ".join(f"{c:>9}" for c in cols))
    for n_eps in (8, 64, 512):
        for label, size in SIZES.items():
            for policy in ("round-robin", "reference", "kvgate"):
                picks = 300 if quick else (1000 if n_eps == 512 or size > 20000 else 3000)
                w50, w99, c50, c99 = bench_pick(policy, n_eps, size, picks)
                print(
                    f"{n_eps:>9} {label:>6} {policy:>12} {w50:>9.1f} {w99:>9.1f} {c50:>9.1f} {c99:>9.1f}",
                    flush=True,
                )


def section_memory(cap: int) -> None:
    from kvgate.scheduling.prefix import PrefixIndex

    print(f"## Prefix index memory at its global cap ({cap:,} blocks; tracemalloc)")
    rng = random.Random(1)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    idx = PrefixIndex(default_capacity=31_250, max_total_blocks=cap)
    n_eps = 64
    for k in range(cap * 2 // 256):  # twice the cap: eviction must hold the line
        idx.add(f"10.0.0.{k % n_eps}:8000", [rng.getrandbits(64) for _ in range(256)])
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    st = idx.stats()
    print(
        f"entries {st.blocks:,} (cap {cap:,}), unique hashes {st.unique_hashes:,}, endpoints {st.endpoints}"
    )
    print(f"memory {(cur - base) / 2**20:.1f} MiB now, {(peak - base) / 2**20:.1f} MiB peak, "
          f"{(cur - base) / max(1, st.blocks):.0f} bytes per entry")  # fmt: skip


def _vllm_page() -> str:
    from kvgate.sim.metrics import ServerCounters, render_vllm
    from kvgate.sim.types import EngineStats

    stats = EngineStats(12, 3, 0.42, 16, 27_000, 4, ["a"], [], 10_000, 6_000, 3, 50_000, 40_000, 900)
    c = ServerCounters()
    rng = random.Random(0)
    for _ in range(2000):
        c.ttft.observe(rng.random())
        c.itl.observe(rng.random() / 20)
        c.e2e.observe(rng.random() * 10)
        c.queue.observe(rng.random() / 5)
    return render_vllm(stats, c, "meta-llama/Llama-3.1-8B-Instruct")


def _serve(n: int, page: str, ports: Any, stop: Any) -> None:
    """Child process: ``n`` loopback ports serving a busy server's ``page`` (its KV-cache usage changed
    at every answer, so the scraper's unchanged-page skip never applies), then ``n`` more serving
    ``page`` itself every time (an idle server's), until ``stop`` (an mp.Event) is set."""
    lifeline.die_with(getattr(mp.parent_process(), "pid", None))  # (ends with the bench, even by SIGKILL)
    from aiohttp import web

    from kvgate.bench.scrape_cpu import busy_pages

    async def main() -> None:
        runners = []
        for busy in (True, False):
            nxt = busy_pages(page) if busy else (lambda: page)

            async def metrics(request: web.Request, nxt: Any = nxt) -> web.Response:
                return web.Response(text=nxt(), content_type="text/plain")

            app = web.Application()
            app.router.add_get("/metrics", metrics)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            for _ in range(n):
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
            for addr in runner.addresses:
                ports.put(addr[1])
            runners.append(runner)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for runner in runners:
            await runner.cleanup()

    asyncio.run(main())


def section_scrape(n_eps: int, rounds: int) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from kvgate.datalayer.mappings import extract
    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.datalayer.store import make_endpoint

    page = _vllm_page()
    print(
        f"## Scrape cost ({n_eps} endpoints, vLLM page of {len(page):,} bytes, {page.count(chr(10))} lines)"
    )
    t0 = time.process_time()
    for _ in range(200):
        extract(page, "vllm", 0.0)
    ours = (time.process_time() - t0) / 200 * 1e6
    t0 = time.process_time()
    for _ in range(20):
        for _fam in text_string_to_metric_families(page):
            pass
    base = (time.process_time() - t0) / 20 * 1e6
    print(
        f"parse one page: kvgate extract {ours:.0f} us CPU; prometheus_client parser (baseline) {base:.0f} us"
    )

    ctx = mp.get_context("spawn")
    ports: Any = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(n_eps, page, ports, stop), daemon=True)
    proc.start()
    try:
        got = [ports.get(timeout=60) for _ in range(2 * n_eps)]

        async def run(ports: list[int]) -> tuple[float, float]:
            store = EndpointStore(make_endpoint(f"127.0.0.1:{p}") for p in ports)
            scraper = MetricsScraper(store, timeout=10.0)
            try:
                assert await scraper.scrape_all() == n_eps  # warm connections
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(rounds):
                    await scraper.scrape_all()
                return (time.process_time() - c0) / rounds, (time.perf_counter() - w0) / rounds
            finally:
                await scraper.stop()

        # A busy server's page changes every scrape (every one is parsed); an idle one's does not (the
        # scraper skips parsing it again). Before review s11-rv M1 every port served one constant page.
        cpu, wall = asyncio.run(run(got[:n_eps]))
        per_ep = cpu / n_eps * 1e6
        print(f"one round over {n_eps} endpoints, page changing every scrape (busy): {cpu * 1e3:.1f} ms CPU "
              f"({per_ep:.0f} us each), {wall * 1e3:.1f} ms wall")  # fmt: skip
        print(f"at the 50 ms reference interval that is {cpu / 0.05 * 100:.0f}% of one core")
        cpu_same, wall_same = asyncio.run(run(got[n_eps:]))
        same_ep, ratio = cpu_same / n_eps * 1e6, cpu_same / cpu
        print(f"one round over {n_eps} endpoints, unchanged page (idle; skipped): {cpu_same * 1e3:.1f} ms "
              f"CPU ({same_ep:.0f} us each, {ratio:.2f}x busy), {wall_same * 1e3:.1f} ms wall")  # fmt: skip
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()


# --------------------------------------------------------------------------------------------------
# Long prompts: the precise (KV-event) prefix scorer at match caps 256 and 2,048 vs the approximate one
# --------------------------------------------------------------------------------------------------

LONG_TOKENS = (8192, 16_384, 32_768)
LONG_ENDPOINTS = (4, 8, 16)
LONG_VARIANTS = ("precise-256", "precise-2048", "approximate")
_LONG_BLOCK = 16  # tokens per block (vLLM's default)
_LONG_DOCS = 8  # shared long documents the warm prompts start with (90% of each prompt)


def _long_policy(variant: str, index_name: str) -> Any:
    """The ``kvgate`` policy as ``serve --kv-events auto`` runs it (precise, ``tokens`` keys) with the
    match cap of ``variant``, or the plain ``kvgate`` policy (approximate prefix scorer)."""
    from kvgate.config.policies import precise_policy

    if variant == "approximate":
        return "kvgate"
    doc = precise_policy("", bind=False)  # no tokenizer: the prompts carry token ids
    for plugin in doc["plugins"]:
        if plugin["type"] == "precise-prefix-cache-scorer":
            params = plugin["parameters"]
            params["indexName"] = index_name
            params["maxPrefixBlocksToMatch"] = int(variant.rsplit("-", 1)[1])
    return doc


def _long_prompts(n_tokens: int, n: int, warm: bool, rng: random.Random) -> list[list[int]]:
    """Warm: one of ``_LONG_DOCS`` shared documents (90% of the prompt) + a unique tail; cold: all unique."""

    def ids(k: int) -> list[int]:  # token ids below 2**17 (a 150k-word vocabulary's range)
        return [t & 0x1FFFF for t in array("I", rng.randbytes(4 * k))]

    head = int(n_tokens * 0.9)
    docs = [ids(head) for _ in range(_LONG_DOCS)]
    if not warm:
        return [ids(n_tokens) for _ in range(n)]
    return [docs[i % _LONG_DOCS] + ids(n_tokens - head) for i in range(n)]


def long_setup(
    variant: str, n_eps: int, n_tokens: int, warm: bool, picks: int, rng: random.Random, index_name: str
) -> tuple[Director, list[InferenceRequest]]:
    """A director for ``variant`` and ``picks`` requests of ``n_tokens`` tokens to time on it.

    Warm: each shared document was picked once, then confirmed by a ``BlockStored`` event from the
    endpoint that got it (the approximate scorer learns from the same picks), so a prompt matches its
    document's blocks (90% of it) on one endpoint. Cold: empty index and every prompt unique (the miss
    path). The caller drops ``index_name`` from the shared registry when done.
    """
    from kvgate.datalayer.kvwire import BlockStored
    from kvgate.scheduling.plugins import precise_prefix

    d = build_director(_long_policy(variant, index_name), _fleet(n_eps, rng), clock=lambda: 0.0, seed=0)
    prompts = _long_prompts(n_tokens, _LONG_DOCS + picks, warm, rng)
    got = precise_prefix.index_named(index_name)
    for i in range(_LONG_DOCS if warm else 0):
        ids = prompts[i]
        r = InferenceRequest(f"w{i}", "llama", token_ids=ids, max_tokens=128)
        ep = d.pick(r).primary
        d.on_dispatched(r, ep)
        d.on_finished(r, ep, None, True)
        if got is not None:
            n = len(ids) // _LONG_BLOCK
            hashes = [rng.getrandbits(63) for _ in range(n)]
            got.apply(ep.address, [BlockStored(hashes, None, ids[: n * _LONG_BLOCK], _LONG_BLOCK)])
    reqs = [
        InferenceRequest(f"b{i}", "llama", token_ids=ids, max_tokens=128)
        for i, ids in enumerate(prompts[_LONG_DOCS:])
    ]
    return d, reqs


def bench_long(
    variant: str, n_eps: int, n_tokens: int, warm: bool, picks: int, repeats: int = 3, seed: int = 0
) -> tuple[float, float]:
    """(median over ``repeats`` of the per-pick CPU p50, the same of p99) in microseconds for
    ``Director.pick`` (post-pick credit included) on ``n_tokens``-token prompts given as token ids
    (``long_setup``)."""
    from kvgate.scheduling.plugins import precise_prefix

    p50s: list[float] = []
    p99s: list[float] = []
    for rep in range(repeats):
        rng = random.Random(seed * 1000 + rep)
        index_name = f"bench-long-{variant}-{n_eps}-{n_tokens}-{warm}-{rep}"
        try:
            d, reqs = long_setup(variant, n_eps, n_tokens, warm, picks, rng, index_name)
            cpu: list[float] = []
            gc.collect()
            gc.disable()
            cpu_clock = time.thread_time_ns
            try:
                for r in reqs:
                    c0 = cpu_clock()
                    d.pick(r)
                    cpu.append((cpu_clock() - c0) / 1000.0)
            finally:
                gc.enable()
        finally:
            precise_prefix._INDEXES.pop(index_name, None)  # the shared registry would keep it alive
        p50s.append(_percentile(cpu, 0.5))
        p99s.append(_percentile(cpu, 0.99))
    return _percentile(p50s, 0.5), _percentile(p99s, 0.5)


def pending_memory(n_eps: int = 4, prompt_blocks: int = 2048) -> tuple[int, int, float]:
    """(pending keys held, per-endpoint bound, bytes per key) after crediting ``n_eps`` endpoints with far
    more distinct ``prompt_blocks``-block prompts than they keep (tracemalloc; keys allocated inside)."""
    from kvgate.datalayer.kvindex import BlockIndex
    from kvgate.scheduling.plugins import precise_prefix

    derive = getattr(precise_prefix, "default_speculative_capacity", None)
    cap = derive(prompt_blocks) if derive is not None else 16_384  # (before the bound was derived)
    rng = random.Random(3)
    idx = BlockIndex(mode="tokens", pending_capacity=cap)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for e in range(n_eps):
        for _ in range(cap // prompt_blocks + 4):
            idx.add_pending(f"e{e}", [rng.getrandbits(64) for _ in range(prompt_blocks)], 100.0, 0.0)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    n = idx.num_pending()
    return n, cap, used / max(1, n)


def section_keys(repeats: int) -> None:
    """What hashing one prompt's blocks costs per key mode (every pick of the precise scorer does it)."""
    from kvgate.datalayer.kvindex import token_keys
    from kvgate.scheduling.blockhash import VLLMBlockHasher

    rng = random.Random(5)
    print("## Precise scorer: hashing one prompt's blocks up to the 2,048-block cap (16-token blocks)")
    print(f"ms of CPU per prompt (process time), median of {max(3, repeats)} runs of 5; token ids < 2**17")
    print(f"{'tokens':>6} {'tokens mode':>12} {'engine sha256':>14} {'engine sha256_cbor':>19}")
    hashers = [VLLMBlockHasher(16, "sha256"), VLLMBlockHasher(16, "sha256_cbor")]
    hashers[1].external_hashes(list(range(16)))  # (its one-time table, outside the timing)
    for n_tokens in LONG_TOKENS:
        ids = _long_prompts(n_tokens, 1, False, rng)[0]
        fns = [partial(token_keys, ids, 16, 2048)] + [partial(h.external_hashes, ids, 2048) for h in hashers]
        cells = []
        for fn in fns:
            runs = []
            for _ in range(max(3, repeats)):
                c0 = time.process_time()
                for _ in range(5):
                    fn()
                runs.append((time.process_time() - c0) / 5 * 1e3)
            cells.append(_percentile(runs, 0.5))
        print(f"{n_tokens:>6} {cells[0]:>12.2f} {cells[1]:>14.2f} {cells[2]:>19.2f}", flush=True)


def section_long(quick: bool, repeats: int) -> None:
    print("## Long prompts: precise prefix scorer at match caps 256 / 2,048 vs the approximate scorer")
    print("Director.pick on the kvgate policy, prompts as token ids (16-token blocks), CPU microseconds")
    print(f"per pick (the thread's own time), median of {repeats} repeats of each p50 / p99")
    picks = 40 if quick else 150
    print(
        f"{'tokens':>6} {'endpoints':>9} {'index':>5} "
        + " ".join(f"{v + ' p50/p99':>22}" for v in LONG_VARIANTS)
    )
    for n_tokens in LONG_TOKENS:
        for n_eps in LONG_ENDPOINTS:
            for warm in (False, True):
                cells = [bench_long(v, n_eps, n_tokens, warm, picks, repeats) for v in LONG_VARIANTS]
                row = " ".join(f"{f'{c50:,.0f} / {c99:,.0f}':>22}" for c50, c99 in cells)
                state = "warm" if warm else "cold"
                print(f"{n_tokens:>6} {n_eps:>9} {state:>5} {row}", flush=True)
    n, cap, per_key = pending_memory()
    print(f"speculative credit at the 2,048-block cap: {cap:,} pending keys per endpoint bound")
    print(
        f"({cap // 2048} prompts of 2,048 blocks), {per_key:.0f} B per pending key (tracemalloc, {n:,} keys):"
    )
    print(f"{cap * per_key / 2**20:.1f} MiB per endpoint when full")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog=prog("kvgate.bench.picker_micro", "bench picker"), description=__doc__.split("\n")[0]
    )
    ap.add_argument("--section", choices=["all", "pick", "memory", "scrape", "long", "keys"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer picks (smoke run)")
    ap.add_argument("--repeats", type=positive_int, default=3, help="long section: repeats per cell (median)")
    ap.add_argument("--scrape-endpoints", type=positive_int, default=128)
    ap.add_argument("--scrape-rounds", type=positive_int, default=20)
    ap.add_argument("--index-cap", type=positive_int, default=DEFAULT_MAX_TOTAL_BLOCKS)
    args = ap.parse_args(argv)
    py = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# kvgate picker micro-benchmarks: {py}, {platform.machine()}, {os.cpu_count()} CPUs", end="")
    print(f", {platform.platform()}")
    calib = min(timeit.repeat("sum(range(1000))", number=10_000, repeat=5)) / 10_000 * 1e6
    print(f"# machine speed: sum(range(1000)) = {calib:.1f} us (python -m timeit; lower = faster machine)")
    if args.section in ("all", "pick"):
        section_pick(args.quick)
    if args.section in ("all", "memory"):
        section_memory(args.index_cap)
    if args.section in ("all", "scrape"):
        section_scrape(args.scrape_endpoints, args.scrape_rounds)
    if args.section in ("all", "long"):
        section_long(args.quick, args.repeats)
    if args.section in ("all", "keys"):
        section_keys(args.repeats)
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    raise SystemExit(main())
