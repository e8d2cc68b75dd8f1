"""s19-qa M1: YAML's ``.nan`` (and ``.inf``) passed the gateway config's and the clusters file's number checks
(NaN fails every ``<`` / ``==``): ``limits.requestTimeoutSeconds: .nan`` was a ready gateway answering every
request 500, ``connectTimeoutSeconds: .nan`` a traceback (exit 1), ``health.metricsStalenessSeconds: .nan``
never ready, ``rateLimits.requestsPerMinute: .nan`` no limit, and a SIGHUP applied it live. Every number of
both files is finite now: a config error naming the key (exit 2 at start, a reload refused keeping the
running config). Where "no bound" exists it is spelled 0 (``requestTimeoutSeconds``, ``rateLimits.*``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.conftest import make_config, make_pools
from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.gateway.reload import ConfigReloader
from kvgate.multicluster.clusters import ClustersError, ClustersFile
from kvgate.multicluster.clusters import parse as parse_clusters

POOL = 'pools: [{name: p, endpoints: ["127.0.0.1:9"], models: [m]}]\n'

# Every number of the gateway file that may be a float (the integer keys refuse a float by type).
FLOAT_KEYS = [
    *(
        ("limits", k)
        for k in (
            "requestTimeoutSeconds", "idleTimeoutSeconds", "connectTimeoutSeconds", "drainTimeoutSeconds",
            "keepAliveSeconds", "headerTimeoutSeconds", "bodyTimeoutSeconds", "sendTimeoutSeconds",
        )
    ),
    *(
        ("health", k)
        for k in (
            "ejectBaseSeconds", "ejectMaxSeconds", "maxEjectionPercent", "probeTimeoutSeconds",
            "metricsStalenessSeconds",
        )
    ),
    ("rateLimits", "requestsPerMinute"),
    ("rateLimits", "tokensPerMinute"),
    ("kubernetes", "staleAfterSeconds"),
    ("kubernetes", "staleNotReadyAfterSeconds"),
]  # fmt: skip


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("section,key", FLOAT_KEYS)
def test_a_non_finite_number_is_refused_naming_the_key(section: str, key: str, value: str) -> None:
    raw = yaml.safe_load(f"{POOL}{section}: {{{key}: {value}}}\n")
    with pytest.raises(GatewayConfigError) as e:
        parse_gateway_config(raw)
    assert e.value.key == f"{section}.{key}"
    assert "finite" in str(e.value)


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_non_finite_scrape_interval_is_refused(value: str) -> None:
    with pytest.raises(GatewayConfigError, match=r"^scrapeIntervalSeconds: must be a finite number"):
        parse_gateway_config(yaml.safe_load(f"{POOL}scrapeIntervalSeconds: {value}\n"))


@pytest.mark.parametrize(
    "section,key",
    [
        ("limits", "requestTimeoutSeconds"),
        ("limits", "connectTimeoutSeconds"),
        ("health", "metricsStalenessSeconds"),
        ("rateLimits", "requestsPerMinute"),
    ],
)
def test_kvgate_serve_exits_2_naming_the_key(tmp_path: Path, section: str, key: str) -> None:
    """The QA's four (test_qa19_config_nan.py): three started and ran, one died with a traceback (exit 1)."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"{POOL}{section}: {{{key}: .nan}}\n")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(cfg), "--port", "0",
             "--admin-port", "0"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{section}.{key}: .nan accepted: the gateway started and ran ({e.stderr!r})")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-600:])
    want = f"config error: {section}.{key}: must be a finite number, got nan"
    assert want in proc.stderr, proc.stderr[-600:]


def test_a_reload_with_nan_is_refused_keeping_the_running_config(tmp_path: Path) -> None:
    """A SIGHUP logged ``limits applied: requestTimeoutSeconds 60 -> nan`` and applied it."""
    f = tmp_path / "gw.yaml"
    cfg = make_config(["127.0.0.1:1001"], extra={"limits": {"requestTimeoutSeconds": 60}})
    rl = ConfigReloader(str(f), cfg, make_pools(cfg))
    f.write_text(f"{POOL.replace('127.0.0.1:9', '127.0.0.1:1001')}limits: {{requestTimeoutSeconds: .nan}}\n")
    assert not rl.reload() and rl.failures == 1
    assert cfg.limits.request_timeout_s == 60


@pytest.mark.parametrize(
    "doc,key",
    [
        ("ttl_s: .nan", "ttl_s"),
        ("ttl_s: .inf", "ttl_s"),
        ("refresh_s: .nan", "refresh_s"),
        ("refresh_s: .inf", "refresh_s"),
        ("epp_timeout_s: .inf", "epp_timeout_s"),
        ("limits: {sendTimeoutSeconds: .nan}", "limits.sendTimeoutSeconds"),
        ("limits: {headerTimeoutSeconds: .inf}", "limits.headerTimeoutSeconds"),
        ("CLUSTER rtt_ms: .nan", "clusters[0].rtt_ms"),
        ("CLUSTER priority: .nan", "clusters[0].priority"),
        ("CLUSTER epp_timeout_s: .nan", "clusters[0].epp_timeout_s"),
    ],
)
def test_a_non_finite_number_in_the_clusters_file_is_refused(tmp_path: Path, doc: str, key: str) -> None:
    cluster = "{name: a, gateway: '127.0.0.1:8001'}"
    if doc.startswith("CLUSTER "):
        cluster = f"{{name: a, gateway: '127.0.0.1:8001', {doc.removeprefix('CLUSTER ')}}}"
        doc = ""
    text = f"clusters: [{cluster}]\n{doc}\n"
    with pytest.raises(ClustersError) as e:
        parse_clusters(yaml.safe_load(text))
    assert e.value.key == key, str(e.value)
    # ... and a reload of the file with it keeps the last good one.
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters: [{name: a, gateway: '127.0.0.1:8001'}]\nttl_s: 4\n")
    cf = ClustersFile(f, check_every_s=0)
    f.write_text(text)
    os.utime(f, (1, 1))
    assert not cf.maybe_reload(1.0)
    assert cf.config.ttl_s == 4
