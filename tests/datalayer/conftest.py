"""Datalayer test fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._metrics_page import Server


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A running ``_metrics_page.Server`` (its vLLM page on 127.0.0.1, an ephemeral port)."""
    s = Server()
    await s.start()
    yield s
    await s.stop()
