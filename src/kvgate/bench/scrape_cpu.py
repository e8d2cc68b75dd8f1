"""``kvgate bench scrape-cpu``: the gateway's CPU per /metrics scrape, before and after, in one run.

What it times: ``MetricsScraper.scrape`` of one endpoint, sequentially, in this process (CPU =
``time.process_time``, user + system, so the kernel's loopback work is counted), on the event loop the
gateway runs (uvloop; ``--loop asyncio`` for the standard one). The server is a child process (its CPU
is not counted) answering as vLLM 0.32's API server does, chunked, with pages captured from a real
vLLM CPU server (``vllm_metrics_pages.json``): the filtered page kvgate asks for (1.7 KB; vLLM's
``cache_config_info`` carries ~40 labels) and, for ``--page whole``, the 48 KB page. ``--target
host:port`` scrapes a running server instead (e.g. ``python -m kvgate.realvllm up -n 1``).

The loopback server answers as a busy server does: its KV-cache usage changes at every answer, so the
page differs from the last one and every timed scrape parses it (the scraper skips parsing a page
identical to the last one, an idle server's; until review s11-rv M1 this bench served one constant page
and so, from b415675 on, timed that skip instead of the parse). With ``--target`` the parse variants
forget the remembered page before each scrape instead (a running server's page may not change).

Variants, interleaved round by round so machine load hits all alike:
- ``aiohttp, labels parsed`` (the code before issue #16's scrape work: aiohttp client, every label set
  walked character by character) -- the baseline;
- ``aiohttp, labels cached`` (the label-set cache of ``promparse`` alone);
- ``lean client, labels cached`` (what runs now on a busy server: ``pageclient.PageClient`` + the cache);
- ``lean client, unchanged page (skipped)`` (what runs now on an idle server: the same page every
  scrape, from a second loopback port, not parsed again).

It prints each variant's median CPU and wall per scrape over the rounds, its ratio to the baseline,
and the parse alone (``extract`` on the page) with and without the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import re
import statistics
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from kvgate import lifeline
from kvgate.entry import ArgumentParser, positive_int, prog

PAGES = "vllm_metrics_pages.json"
SKIPPED = "lean client, unchanged page (skipped)"
VARIANTS = ("aiohttp, labels parsed", "aiohttp, labels cached", "lean client, labels cached", SKIPPED)
_USAGE = re.compile(r"^(vllm:kv_cache_usage_perc\{[^}\n]*\} )\S+$", re.M)


def load_pages() -> dict[str, str]:
    return dict(json.loads(resources.files("kvgate.bench").joinpath(PAGES).read_text()))


@contextlib.contextmanager
def label_cache(on: bool) -> Iterator[None]:
    """Off: every label set is walked again (the parser before the cache), by routing the cached
    call to the plain parser for the duration."""
    from kvgate.datalayer import promparse

    cached = promparse._cached_labels
    if not on:
        promparse._cached_labels = promparse._parse_labels
    try:
        yield
    finally:
        promparse._cached_labels = cached


def busy_pages(page: str) -> Callable[[], str]:
    """A busy server's page, one per call: ``page`` with its ``vllm:kv_cache_usage_perc`` value changed
    at every call (a serving vLLM's changes between scrapes), so no page equals the one before it and
    the scraper's unchanged-page skip never applies."""
    m = _USAGE.search(page)
    if m is None:
        raise ValueError("the page has no vllm:kv_cache_usage_perc sample to vary")
    head, tail = page[: m.end(1)], page[m.end() :]
    count = itertools.count(1)
    return lambda: f"{head}{next(count) % 1_000_000 / 1e6:.6f}{tail}"


def _app(pages: dict[str, str], busy: bool) -> Any:
    """``/metrics/`` answers the filtered page and ``/metrics`` the whole one, chunked like vLLM's
    uvicorn: changed at every answer (``busy``, ``busy_pages``) or the same page every time."""
    from aiohttp import web

    async def answer(request: web.Request, text: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(text.encode())
        await resp.write_eof()
        return resp

    page = {k: busy_pages(pages[k]) if busy else (lambda t=pages[k]: t) for k in ("filtered", "whole")}
    app = web.Application()

    async def filtered(request: web.Request) -> web.StreamResponse:
        return await answer(request, page["filtered"]())

    async def whole(request: web.Request) -> web.StreamResponse:
        return await answer(request, page["whole"]())

    app.router.add_get("/metrics/", filtered)
    app.router.add_get("/metrics", whole)
    return app


def _serve(pages: dict[str, str], ports: Any, stop: Any) -> None:
    """Child process: two loopback ports, the first answering a busy server's pages (changed at every
    answer), the second the same page every time (an idle server's), until ``stop`` is set."""
    lifeline.die_with(getattr(mp.parent_process(), "pid", None))  # (ends with the bench, even by SIGKILL)
    from aiohttp import web

    async def main() -> None:
        runners = []
        for busy in (True, False):
            runner = web.AppRunner(_app(pages, busy), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.put(runner.addresses[0][1])
            runners.append(runner)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for runner in runners:
            await runner.cleanup()

    asyncio.run(main())


async def _round(
    address: str, variant: str, n: int, whole: bool, forget: bool = False
) -> tuple[float, float]:
    """CPU and wall seconds per scrape over ``n`` sequential scrapes (after one warm-up scrape).

    ``forget``: drop the page the scraper remembers before each timed scrape, so it parses even a page
    equal to the last one (``--target``: a running server's page may not change)."""
    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.datalayer.store import EndpointStore, make_endpoint

    ep = make_endpoint(address)
    http = "lean" if variant.startswith("lean") else "aiohttp"
    scraper = MetricsScraper(EndpointStore([ep]), timeout=10.0, http=http)
    if whole:
        scraper._unfiltered[address] = float("inf")  # ask for the whole page, as for a non-filtering server
    try:
        with label_cache("cached" in variant):
            if not await scraper.scrape(ep):
                raise RuntimeError(f"scrape of {address} failed: {scraper.stats[address].last_error}")
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                if forget:
                    scraper._last_page.clear()
                await scraper.scrape(ep)
            return (time.process_time() - c0) / n, (time.perf_counter() - w0) / n
    finally:
        await scraper.stop()


def _parse_cost(page: str, n: int = 2000) -> tuple[float, float]:
    from kvgate.datalayer.mappings import extract

    out = []
    for on in (False, True):
        with label_cache(on):
            extract(page, "vllm", 0.0)
            t0 = time.process_time()
            for _ in range(n):
                extract(page, "vllm", 0.0)
            out.append((time.process_time() - t0) / n)
    return out[0], out[1]


def run(
    address: str,
    same_address: str,
    rounds: int,
    per_round: int,
    whole: bool,
    runner: Callable[[Any], Any],
    forget: bool = False,
) -> None:
    """``address`` answers a busy server's pages, ``same_address`` an idle one's (the skipped variant);
    ``forget``: the parse variants drop the remembered page before each scrape (``_round``)."""
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
        for v in order:
            skipped = v == SKIPPED
            addr = same_address if skipped else address
            c, w = runner(_round(addr, v, per_round, whole, forget and not skipped))
            cpu[v].append(c)
            wall[v].append(w)
    base = statistics.median(cpu[VARIANTS[0]])
    print(f"| variant | CPU per scrape (median of {rounds} rounds) | vs baseline | wall per scrape |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        c = statistics.median(cpu[v])
        spread = f"{min(cpu[v]) * 1e6:.0f}-{max(cpu[v]) * 1e6:.0f}"
        w = statistics.median(wall[v])
        print(f"| {v} | {c * 1e6:.0f} us ({spread}) | {c / base:.2f}x | {w * 1e6:.0f} us |")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog=prog("kvgate.bench.scrape_cpu", "bench scrape-cpu"), description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--rounds", type=positive_int, default=6, help="rounds per variant (alternating order)")
    ap.add_argument("--per-round", type=positive_int, default=400, help="sequential scrapes per round")
    ap.add_argument("--page", choices=["filtered", "whole"], default="filtered")
    ap.add_argument("--target", help="host:port of a running server to scrape instead of the captured pages")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args(argv)

    if args.loop == "uvloop":
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    else:
        runner = asyncio.run
    pages = load_pages()
    whole = args.page == "whole"
    page = pages[args.page]
    off, on = _parse_cost(page)
    print(f"## Scrape CPU ({args.page} vLLM 0.32 page, {len(page):,} bytes; loop {args.loop})")
    print(f"parse alone (extract): labels parsed {off * 1e6:.1f} us, labels cached {on * 1e6:.1f} us "
          f"({on / off:.2f}x)")  # fmt: skip
    if args.target:
        print(f"scraping {args.target} (a running server; the parse variants forget the last page, the "
              f"skipped one times the skip only if the server's page does not change)")  # fmt: skip
        run(args.target, args.target, args.rounds, args.per_round, whole, runner, forget=True)
        return 0
    ctx = mp.get_context("spawn")
    ports: Any = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(pages, ports, stop), daemon=True)
    proc.start()
    try:
        busy, same = ports.get(timeout=60), ports.get(timeout=60)
        print("scraping a loopback server (child process) answering with the captured page, chunked, its "
              "KV-cache usage changed at every answer (a busy server's); skipped: the same page")  # fmt: skip
        run(f"127.0.0.1:{busy}", f"127.0.0.1:{same}", args.rounds, args.per_round, whole, runner)
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return 0


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    raise SystemExit(main())
