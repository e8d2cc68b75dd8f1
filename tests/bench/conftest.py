"""Bench test fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.datalayer import scraper as scraper_mod


@pytest.fixture
def parsed_pages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time the metrics scraper parses a page (``scraper.extract``
    counted for the test's duration)."""
    calls: list[int] = []
    real = scraper_mod.extract

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(scraper_mod, "extract", counting)
    return calls
