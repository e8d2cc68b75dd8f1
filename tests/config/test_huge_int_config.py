"""Review s19-fixes-a L1 (on 9a192da, "every number of the gateway config and the clusters file is
finite"): now each a config error naming the key (exit 2), and a reload keeps the last good file. Before:
a YAML integer too large for a float (a plain digit string, 401 digits; YAML 1.1 reads ``1e400`` as a string,
so this is the integer spelling of ``.inf``) passes every new check, being an int:

- gateway file: ``limits.requestTimeoutSeconds`` (and idle / connect timeouts, ``health.*``) accepted, then
  every request answers ``500 internal error in the gateway`` (``OverflowError`` at ``start + bound``), the
  very symptom s19-qa M1 fixed for ``.nan``; ``rateLimits.requestsPerMinute`` is a traceback, not exit 2;
- clusters file: ``_seconds`` / ``_rtt_ms`` (new in 9a192da) catch TypeError and ValueError but not the
  OverflowError ``float()`` raises (``_int`` beside them does catch it): a traceback at the start, and at a
  reload the exception escapes ``ClustersFile.maybe_reload`` (it catches ``ClustersError`` only), ending the
  reload task of ``kvgate serve --clusters`` / the hub for good (no later fix of the file is read)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvgate.config.gateway import GatewayConfigError, parse_gateway_config
from kvgate.multicluster.clusters import ClustersError, ClustersFile, parse

HUGE = 10**400
POOL = {"pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}]}


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("limits", "requestTimeoutSeconds"),
        ("limits", "idleTimeoutSeconds"),
        ("health", "metricsStalenessSeconds"),
        ("rateLimits", "requestsPerMinute"),
    ],
)
def test_gateway_file_huge_int_refused_naming_the_key(section: str, key: str) -> None:
    """Before the fix: accepted (the first three) or OverflowError (rateLimits)."""
    with pytest.raises(GatewayConfigError, match=key):
        parse_gateway_config({**POOL, section: {key: HUGE}})


@pytest.mark.parametrize(
    "doc",
    [{"ttl_s": HUGE}, {"refresh_s": HUGE}, {"rtt_ms": HUGE}],
    ids=lambda d: next(iter(d)),
)
def test_clusters_file_huge_int_is_a_clusters_error(doc: dict) -> None:
    """Before the fix: OverflowError (a traceback, exit 1), not ClustersError (exit 2 naming the key)."""
    top = {k: v for k, v in doc.items() if k != "rtt_ms"}
    cluster = {
        "name": "a",
        "gateway": "127.0.0.1:1",
        **{k: v for k, v in doc.items() if k == "rtt_ms"},
    }
    with pytest.raises(ClustersError):
        parse({"clusters": [cluster], **top})


def test_clusters_file_reload_with_huge_int_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    """Before the fix: OverflowError escaped maybe_reload (the door's reload loop task died with it)."""
    path = tmp_path / "clusters.yaml"
    path.write_text("clusters:\n  - {name: a, gateway: '127.0.0.1:1'}\n")
    cf = ClustersFile(path, check_every_s=0.0)
    path.write_text("ttl_s: 1" + "0" * 400 + "\nclusters:\n  - {name: a, gateway: '127.0.0.1:1'}\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cf.maybe_reload(100.0) is False
    assert cf.config.ttl_s == 3.0


def test_an_integer_past_python_s_digit_limit_is_a_config_error(tmp_path: Path) -> None:
    """5000 digits: PyYAML's int() itself raises ValueError (Python's 4300-digit limit): a config error
    for both files, and a reload of the clusters file keeps the last good one."""
    from kvgate.config.gateway import load_gateway_yaml
    from kvgate.multicluster.clusters import load

    digits = "1" + "0" * 5000
    gw = tmp_path / "gw.yaml"
    gw.write_text(f"limits: {{requestTimeoutSeconds: {digits}}}\n")
    with pytest.raises(GatewayConfigError):
        load_gateway_yaml(str(gw))
    path = tmp_path / "clusters.yaml"
    path.write_text("clusters:\n  - {name: a, gateway: '127.0.0.1:1'}\n")
    cf = ClustersFile(path, check_every_s=0.0)
    path.write_text(f"ttl_s: {digits}\nclusters:\n  - {{name: a, gateway: '127.0.0.1:1'}}\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ClustersError):
        load(path)
    assert cf.maybe_reload(100.0) is False
    assert cf.config.ttl_s == 3.0
