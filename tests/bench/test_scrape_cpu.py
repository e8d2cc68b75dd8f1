"""`kvgate bench scrape-cpu` runs end to end on the captured vLLM pages (figures are not checked)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiohttp import web

from kvgate.bench import scrape_cpu
from kvgate.datalayer import promparse
from kvgate.datalayer.mappings import extract


def test_the_captured_vllm_pages_carry_every_signal() -> None:
    pages = scrape_cpu.load_pages()
    for kind in ("filtered", "whole"):
        m = extract(pages[kind], "vllm", 1.0)
        assert (m.block_size, m.num_gpu_blocks, m.updated_at) == (128, 64, 1.0), kind


def test_the_baseline_variant_really_parses_every_label_set() -> None:
    with scrape_cpu.label_cache(False):
        assert promparse._cached_labels is promparse._parse_labels
    assert promparse._cached_labels is not promparse._parse_labels


def test_runs_every_variant_and_parses_every_timed_scrape(
    capsys: pytest.CaptureFixture[str], parsed_pages: list[int]
) -> None:
    """Review s11-rv M1: since the scraper skips a page equal to the last one, a server answering one
    constant page made every timed scrape the skip. The parse variants must parse each of their scrapes
    (warm-up + 5); only the skipped variant parses its warm-up alone."""
    calls = parsed_pages
    assert scrape_cpu.main(["--rounds", "1", "--per-round", "5", "--loop", "asyncio"]) == 0
    out = capsys.readouterr().out
    for variant in scrape_cpu.VARIANTS:
        assert f"| {variant} |" in out
    parse_variants = [v for v in scrape_cpu.VARIANTS if v != getattr(scrape_cpu, "SKIPPED", None)]
    assert len(calls) == len(parse_variants) * 6 + 1, f"{len(calls)} pages parsed"


def test_busy_pages_differ_every_answer_in_the_kv_usage_only() -> None:
    page = scrape_cpu.load_pages()["filtered"]
    nxt = scrape_cpu.busy_pages(page)
    a, b = nxt(), nxt()
    assert a != b != page and len(a.splitlines()) == len(page.splitlines())
    ma, mb, m0 = (extract(p, "vllm", 1.0) for p in (a, b, page))
    assert ma.kv_cache_usage != mb.kv_cache_usage
    assert replace(ma, kv_cache_usage=0.0) == replace(mb, kv_cache_usage=0.0) == m0


def test_forget_parses_a_constant_page_every_scrape(parsed_pages: list[int]) -> None:
    """``--target``: a running server's page may not change; the parse variants forget the last page."""
    calls = parsed_pages
    page = scrape_cpu.load_pages()

    async def main() -> None:
        runner = web.AppRunner(scrape_cpu._app(page, busy=False), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        addr = f"127.0.0.1:{runner.addresses[0][1]}"
        try:
            await scrape_cpu._round(addr, "aiohttp, labels parsed", 5, False, forget=True)
            assert len(calls) == 6
            await scrape_cpu._round(addr, scrape_cpu.SKIPPED, 5, False)
            assert len(calls) == 7  # the warm-up only: the skip is what that variant times
        finally:
            await runner.cleanup()

    asyncio.run(main())
