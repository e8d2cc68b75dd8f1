"""``kvgate serve --clusters`` counts its clusters-file reloads as ``kvgate serve --config`` counts its
config's (review s29-rev-a29: before, a refused clusters file showed only in the log):
``kvgate_multicluster_config_reloads_total{result}`` (applied / invalid / failed, each at 0 from the start)
and the last reload's pair, ``..._config_last_reload_successful`` and
``..._config_last_reload_success_timestamp_seconds``. No server, no clock: the poll is called directly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvgate.multicluster.clusters import ClustersFile
from kvgate.multicluster.serve import GlobalGateway

A = "clusters: [{name: a, gateway: '127.0.0.1:9'}]\n"
AB = "clusters: [{name: a, gateway: '127.0.0.1:9'}, {name: b, gateway: '127.0.0.1:10'}]\n"


def _value(gw: GlobalGateway, name: str, **labels: str) -> float | None:
    return gw.metrics.registry.get_sample_value(name, labels)


def _edit(f: Path, text: str, t: float) -> None:
    f.write_text(text)
    os.utime(f, (t, t))  # (a modification time surely not the one read)


def test_clusters_file_reloads_are_counted_with_the_last_reload_gauges(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    _edit(f, A, 1e9)
    cf = ClustersFile(f, check_every_s=0.0)
    gw = GlobalGateway(cf.config, "round-robin", clusters_file=cf, fetch=False)
    walls = iter([2000.0, 3000.0])
    gw.metrics.reload_metrics._wall = lambda: next(walls)
    total = "kvgate_multicluster_config_reloads_total"
    ok = "kvgate_multicluster_config_last_reload_successful"
    at = "kvgate_multicluster_config_last_reload_success_timestamp_seconds"
    for result in ("applied", "invalid", "failed"):  # series from the start: the first refusal an increase
        assert _value(gw, total, result=result) == 0.0
    assert _value(gw, ok) == 1.0 and (_value(gw, at) or 0.0) > 0.0  # (the start's load)

    _edit(f, "clusters: [{name: a}]\n", 1.1e9)  # no address: refused, the last good file kept
    assert cf.maybe_reload(1.0) is False
    assert _value(gw, total, result="invalid") == 1.0 and _value(gw, ok) == 0.0

    _edit(f, AB, 1.2e9)
    assert cf.maybe_reload(2.0) is True
    assert _value(gw, total, result="applied") == 1.0
    assert _value(gw, ok) == 1.0 and _value(gw, at) == 2000.0

    def broken(_cfg: object) -> None:
        raise RuntimeError("boom")

    cf.on_change = broken  # (applying raised: failed, and raised as before)
    _edit(f, A, 1.3e9)
    with pytest.raises(RuntimeError):
        cf.maybe_reload(3.0)
    assert _value(gw, total, result="failed") == 1.0 and _value(gw, ok) == 0.0
    assert _value(gw, at) == 2000.0  # (the last success's time stays)
