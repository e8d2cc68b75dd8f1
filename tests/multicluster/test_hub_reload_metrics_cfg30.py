"""The hub EPP (``kvgate epp --clusters``) counts its clusters-file reloads as ``kvgate serve --clusters``
counts the same file's (the leftover of review s29-rev-a29: before, the hub showed a refused file only in
its log): ``kvgate_multicluster_config_reloads_total{result}`` (each result a series from the start) and the
last reload's pair, ``..._config_last_reload_successful`` / ``..._success_timestamp_seconds``, the same
family names on both doors. Fails on 6d96a979: ``HubFeed`` took no registry, and the real ``kvgate epp
--clusters`` exposed none of them (cfg30)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from extproc.test_cli import _launch, _stop
from kvgate.multicluster.clusters import ClustersFile
from kvgate.multicluster.hub import ClusterDirector, HubFeed
from kvgate.multicluster.serve import GlobalGateway

A = "clusters: [{name: a, gateway: '127.0.0.1:9'}]\n"
AB = "clusters: [{name: a, gateway: '127.0.0.1:9'}, {name: b, gateway: '127.0.0.1:10'}]\n"
TOTAL = "kvgate_multicluster_config_reloads_total"
OK = "kvgate_multicluster_config_last_reload_successful"
AT = "kvgate_multicluster_config_last_reload_success_timestamp_seconds"


def _edit(f: Path, text: str, t: float) -> None:
    f.write_text(text)
    os.utime(f, (t, t))  # (a modification time surely not the one read)


def _families(r: CollectorRegistry) -> set[str]:
    return {m.name for m in r.collect() if m.name.startswith("kvgate_multicluster_config_")}


def test_hub_counts_clusters_file_reloads_under_the_serve_doors_names(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    _edit(f, A, 1e9)
    cf = ClustersFile(f, check_every_s=0.0)
    r = CollectorRegistry()
    walls = iter([1000.0, 2000.0])  # (the wall clock is injected: rev-a30 F2)
    feed = HubFeed(ClusterDirector(cf.config, "kvgate", seed=0), cf, registry=r, wall=lambda: next(walls))
    assert feed.reload_metrics is not None
    for result in ("applied", "invalid", "failed"):
        assert r.get_sample_value(TOTAL, {"result": result}) == 0.0
    assert r.get_sample_value(OK) == 1.0 and r.get_sample_value(AT) == 1000.0

    _edit(f, "clusters: [{name: a}]\n", 1.1e9)  # no address: refused, the last good file kept
    assert cf.maybe_reload(1.0) is False
    assert r.get_sample_value(TOTAL, {"result": "invalid"}) == 1.0 and r.get_sample_value(OK) == 0.0

    _edit(f, AB, 1.2e9)
    assert cf.maybe_reload(2.0) is True
    assert r.get_sample_value(TOTAL, {"result": "applied"}) == 1.0
    assert r.get_sample_value(OK) == 1.0 and r.get_sample_value(AT) == 2000.0
    assert feed.source.file_cfg == cf.config  # (applied to the hub)

    # The same families as ``kvgate serve --clusters`` shows for its clusters file.
    other = ClustersFile(f, check_every_s=0.0)
    gw = GlobalGateway(other.config, "round-robin", clusters_file=other, fetch=False)
    assert _families(r) == _families(gw.metrics.registry) and len(_families(r)) == 3


def test_hub_without_a_registry_counts_nothing(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    _edit(f, A, 1e9)
    cf = ClustersFile(f, check_every_s=0.0)
    feed = HubFeed(ClusterDirector(cf.config, "kvgate", seed=0), cf)
    assert feed.reload_metrics is None and cf.on_result is None


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


@pytest.mark.asyncio
async def test_kvgate_epp_clusters_serves_the_reload_metrics(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    _edit(f, A, 1e9)
    proc, ports = await _launch("--clusters", str(f), "--plaintext")
    url = f"http://127.0.0.1:{ports['metrics']}/metrics"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                text = await resp.text()
            assert _sample(text, OK) == 1.0, text[-3000:]
            assert _sample(text, f'{TOTAL}{{result="invalid"}}') == 0.0
            _edit(f, "clusters: [{name: a}]\n", 1.1e9)  # refused at the next poll (every 1 s)
            async with asyncio.timeout(60):
                while _sample(text, OK) != 0.0:
                    await asyncio.sleep(0.2)
                    async with http.get(url) as resp:
                        text = await resp.text()
            assert _sample(text, f'{TOTAL}{{result="invalid"}}') == 1.0
    finally:
        assert await _stop(proc) == 0
