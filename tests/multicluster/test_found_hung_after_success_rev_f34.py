"""rev-f34-F2 (low): ``ClusterState.found_hung`` (c0f2266d) says the failing streak's WARNING with no
streak left: the probe after a cut runs up to ``probe_timeout_s`` (2 s by default, the back-off 1 s), and a
request that succeeds there meanwhile (``succeeded``: failures 0) does not stop the verdict's
'cluster east failing: 0 attempts in a row failed, found hung' WARNING; said_failing then stays True, so
the next success logs 'answers again (after 0 failed attempts in a row)'."""

from __future__ import annotations

import logging

import pytest

from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.state import ClusterState


def test_no_failing_warning_once_the_cluster_succeeded_since_its_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "kvgate.multicluster")
    st = ClusterState(ClusterSpec("east", gateway="127.0.0.1:9"))
    st.failed(100.0, "cut at limits.requestTimeoutSeconds")  # the cut charges it (1 failure, no line)
    st.succeeded()  # a request there succeeds while the probe still waits
    st.found_hung(
        101.5, "cut at limits.requestTimeoutSeconds before its head, and its gateway answered no probe"
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warned, warned
