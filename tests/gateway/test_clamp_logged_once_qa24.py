"""qa24 F4 (cosmetic): ``limits.maxConnections N clamped to M by the open-file limit`` was logged twice at
every start of ``kvgate serve`` (each listener asks ``connection_cap``); once per process now."""

from __future__ import annotations

import logging

import pytest

from kvgate.httpfront.server import connection_cap


def test_the_clamp_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "kvgate"):
        assert connection_cap(10_123, (1_000, 4_096)) == connection_cap(10_123, (1_000, 4_096)) < 10_123
    assert sum("clamped to" in r.getMessage() for r in caplog.records) == 1
