"""qa36a F12: a pool's ``policy:`` given beside its ``endpointPickerConfig`` / ``endpointPickerConfigFile``
is not applied (the picker config is the pool's picker); it was ignored without a word. Now one WARNING at
load names both keys, in ``kvgate serve`` (``picker_spec``, as a pool's picker is built) and in
``kvgate epp --config``. A pool with only one of them says nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

import kvgate.extproc.cli as epp_cli
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import picker_spec

EPC = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [{"type": "queue-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
}


def _pool(tmp_path: Path, *, policy: bool, as_file: bool) -> dict[str, Any]:
    pool: dict[str, Any] = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    if policy:
        pool["policy"] = "round-robin"
    if as_file:
        (tmp_path / "epc.yaml").write_text(yaml.safe_dump(EPC))
        pool["endpointPickerConfigFile"] = str(tmp_path / "epc.yaml")
    else:
        pool["endpointPickerConfig"] = EPC
    return pool


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "policy" in r.getMessage()
    ]


@pytest.mark.parametrize("as_file", [True, False])
def test_kvgate_serve_warns_of_a_policy_beside_a_picker_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, as_file: bool
) -> None:
    caplog.set_level(logging.WARNING)
    [pool] = parse_gateway_config({"pools": [_pool(tmp_path, policy=True, as_file=as_file)]}).pools
    picker_spec(pool, announce=True)
    [line] = _said(caplog)
    key = "endpointPickerConfigFile" if as_file else "endpointPickerConfig"
    assert line.startswith("pool p: policy 'round-robin' not applied") and key in line
    caplog.clear()
    [alone] = parse_gateway_config({"pools": [_pool(tmp_path, policy=False, as_file=as_file)]}).pools
    picker_spec(alone, announce=True)
    assert _said(caplog) == []


def test_kvgate_epp_config_warns_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fake(*_a: Any, **_kw: Any) -> None:  # (nothing bound: the config's load is the point)
        return None

    monkeypatch.setattr(epp_cli, "_serve", fake)
    caplog.set_level(logging.WARNING)
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump({"pools": [_pool(tmp_path, policy=True, as_file=True)]}))
    assert epp_cli.main(["--config", str(tmp_path / "gw.yaml")]) == 0
    [line] = _said(caplog)
    assert "policy 'round-robin' not applied" in line and "endpointPickerConfigFile" in line
