"""Config errors name the exact (nested) key: ``metrics-data-source``'s, its ``port`` checked as upstream,
and unknown keys under the precise scorer's ``tokenizersPoolConfig`` / ``prefixStoreConfig`` (review
s28-rev-cfg28 F6/F7/F8, fixcfg28). Each fails on main ca67a4cb."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgate.config.picker import load_config
from kvgate.httpfront.tls import self_signed
from kvgate.scheduling.framework import ConfigError
from kvgate.scheduling.plugins import precise_prefix

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"


def _source(parameters: str) -> str:
    return HEAD + f"- type: metrics-data-source\n  parameters: {parameters}\n- type: queue-scorer\n"


def test_an_unreadable_client_key_names_clientkeypath(tmp_path: Path) -> None:
    # F6: the certificate is fine, the key file is missing: the error names clientCertPath.
    cert = tmp_path / "c.pem"
    cert.write_bytes(self_signed().cert_pem)
    with pytest.raises(ConfigError, match=r"^plugins\[0\]\.parameters\.clientKeyPath:"):
        load_config(_source(f"{{clientCertPath: {cert}, clientKeyPath: {tmp_path}/absent.pem}}"))


def test_port_zero_is_refused_as_upstream() -> None:
    # F7: llm-d-router's metrics-data-source: "invalid port 0: must be between 1 and 65535"; kvgate takes
    # 0 as "not set" and scrapes the endpoint's own port.
    with pytest.raises(ConfigError, match=r"^plugins\[0\]\.parameters\.port:"):
        load_config(_source("{port: 0}"))


@pytest.mark.parametrize(
    ("indexer", "key"),
    [
        ("{tokenizersPoolConfig: {modelName: m, modelNmae: n}}", "tokenizersPoolConfig.modelNmae"),
        ("{prefixStoreConfig: {bogus: 1}}", "prefixStoreConfig.bogus"),
    ],
)
def test_an_unknown_nested_precise_key_is_an_error(indexer: str, key: str) -> None:
    # F8: the commit says unknown keys are ConfigErrors naming the nested key; these two mappings are
    # dropped whole (``tok.raw.clear()``, ``idx.raw.pop("prefixStoreConfig")``), typos included.
    doc = HEAD + (
        "- type: precise-prefix-cache-scorer\n"
        f"  parameters: {{indexName: revcfg28keys, indexerConfig: {indexer}}}\n"
    )
    try:
        with pytest.raises(ConfigError, match=rf"^plugins\[0\]\.parameters\.indexerConfig\.{key}"):
            load_config(doc)
    finally:
        precise_prefix._INDEXES.pop("revcfg28keys", None)
