"""Session-25 closing note: "Lines dropped by ``OffLoopStderr`` are reported only at exit (no metric)". Each
door's ``/metrics`` now has ``<prefix>_log_lines_dropped_total`` (``kvgate_gateway_`` for ``kvgate serve`` and
each ``--workers`` worker, ``kvgate_multicluster_`` for ``serve --clusters``, ``kvgate_epp_`` for ``kvgate
epp``), a counter read at scrape time from the process's handler, beside the access log's
``kvgate_gateway_access_log_lines_dropped_total``. Fails on main 6c4d40fa (no such family).

A real ``OffLoopStderr`` on a real 4 KiB pipe nobody reads, installed as the process's handler for the
test; its lines past ``PENDING_MAX`` are dropped, and each door's registry reports that count."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading

import pytest
from prometheus_client import generate_latest

from kvgate import stderrlog
from kvgate.extproc.metrics import EppMetrics
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.workers import merge_metrics
from kvgate.multicluster.serve import _Metrics
from kvgate.stderrlog import OffLoopStderr


def _value(text: str, name: str) -> float:
    assert f"# TYPE {name} counter" in text, text[-2000:]
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m is not None, text[-2000:]
    return float(m.group(1))


def test_every_doors_metrics_count_the_log_lines_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    doors = [
        (GatewayMetrics(), "kvgate_gateway"),
        (_Metrics(), "kvgate_multicluster"),
        (EppMetrics(), "kvgate_epp"),
    ]
    monkeypatch.setattr(stderrlog, "_installed", None)
    for metrics, prefix in doors:  # (no handler installed: 0)
        assert _value(generate_latest(metrics.registry).decode(), f"{prefix}_log_lines_dropped_total") == 0
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    out = os.fdopen(w, "w")
    handler = OffLoopStderr(out)
    monkeypatch.setattr(stderrlog, "_installed", handler)
    log = logging.getLogger("test-log-lines-dropped-metric")
    log.propagate, old = False, log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    reader = threading.Thread(target=lambda: _drain(r), daemon=True)
    try:
        for i in range(2000):  # (~2 MB: past the pipe and PENDING_MAX)
            log.info("line %04d %s", i, "x" * 1000)
        lost = handler.dropped()
        assert lost > 0
        for metrics, prefix in doors:
            text = generate_latest(metrics.registry).decode()
            assert _value(text, f"{prefix}_log_lines_dropped_total") == lost, prefix
        # (the --workers supervisor's merge keeps it a counter, per worker)
        merged = merge_metrics([generate_latest(doors[0][0].registry).decode()]).decode()
        assert "# TYPE kvgate_gateway_log_lines_dropped_total counter" in merged
        assert f'kvgate_gateway_log_lines_dropped_total{{worker="0"}} {float(lost)}' in merged
        reader.start()
        handler.close()
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(old)
        out.close()
        reader.join(10)
        os.close(r)


def _drain(fd: int) -> None:
    while os.read(fd, 1 << 16):
        pass
