"""`kvgate bench scrape-cpu` runs end to end on the captured vLLM pages (figures are not checked)."""

from __future__ import annotations

import pytest

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


def test_runs_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    assert scrape_cpu.main(["--rounds", "1", "--per-round", "5", "--loop", "asyncio"]) == 0
    out = capsys.readouterr().out
    for variant in scrape_cpu.VARIANTS:
        assert f"| {variant} |" in out
