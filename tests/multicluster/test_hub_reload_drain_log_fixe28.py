"""The hub EPP (``kvgate epp --clusters``) says a reload's new drain as ``kvgate serve --clusters`` does:
"clusters file: limits applied: drainTimeoutSeconds a -> b" (fixe28), unless ``--drain-timeout`` fixed it.
Fails before fixe28 (main 00b6e63e): no such line from ``HubFeed.reload``."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from kvgate.multicluster.clusters import ClustersConfig
from kvgate.multicluster.hub import ClusterDirector, HubFeed

LINE = "clusters file: limits applied: drainTimeoutSeconds 30 -> 5"


def _feed(**kw: bool) -> HubFeed:
    cfg = ClustersConfig(clusters=(), drain_timeout_s=30.0)
    return HubFeed(ClusterDirector(cfg, "kvgate", seed=0), **kw)


def test_a_reload_changing_the_drain_says_so(caplog: pytest.LogCaptureFixture) -> None:
    feed = _feed()
    caplog.set_level(logging.INFO, logger="kvgate.multicluster.hub")
    same = dataclasses.replace(feed.source.file_cfg)
    feed.reload(same)
    assert "drainTimeoutSeconds" not in caplog.text  # (unchanged: no line)
    feed.reload(dataclasses.replace(same, drain_timeout_s=5.0))
    assert LINE in caplog.text, caplog.text
    assert feed.source.file_cfg.drain_timeout_s == 5.0


def test_not_when_the_flag_fixed_the_drain(caplog: pytest.LogCaptureFixture) -> None:
    feed = _feed(drain_from_file=False)
    caplog.set_level(logging.INFO, logger="kvgate.multicluster.hub")
    feed.reload(dataclasses.replace(feed.source.file_cfg, drain_timeout_s=5.0))
    assert "drainTimeoutSeconds" not in caplog.text, caplog.text
