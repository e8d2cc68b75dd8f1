"""picker_micro's "Scrape cost" times parsing scrapes, not the unchanged-page skip (review s11-rv M1)."""

from __future__ import annotations

import pytest

from kvgate.bench import picker_micro


def test_scrape_section_parses_every_busy_scrape_and_shows_the_skip(
    capsys: pytest.CaptureFixture[str], parsed_pages: list[int]
) -> None:
    """Its servers answered one constant page, so since the scraper skips a page equal to the last one
    every timed round was the skip, reported as the busy cadence's cost. Now the busy endpoints' pages
    change every answer (warm-up + 3 rounds parse, 2 endpoints: 8) and an idle set shows the skip (its
    warm-up alone parses: 2)."""
    calls = parsed_pages
    picker_micro.section_scrape(2, 3)
    out = capsys.readouterr().out
    assert len(calls) == 2 * (1 + 3) + 2, f"{len(calls)} pages parsed"
    assert "page changing every scrape (busy)" in out and "unchanged page (idle; skipped)" in out
