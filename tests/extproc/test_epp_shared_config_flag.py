"""Review s19-gw M1 (4a89e95): ``kvgate epp --config FILE --pool-name P`` on a file shared with
``kvgate serve`` exits 2 as soon as the file has a key only ``kvgate serve`` applies (here ``listen`` and
``auth``): right for a file written for the EPP (docs/hardening.md: parsed-but-ignored config is an
error naming the key), but an EPP that ran on the gateway's ConfigMap had no way to say so. The lead's
decision: keep the refusal, and add the opt-in ``--shared-config``, under which each gateway-only key is
one warning line naming it instead.

The flag test fails before the fix (903ccbe: no such flag, exit 2); the refusal test stands before and after
(its hint line naming the flag is new).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml


def _shared(tmp_path: Path) -> Path:
    (tmp_path / "keys.txt").write_text("team-a sk-aaaa\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "listen": {"port": 8000},
        "auth": {"apiKeysFile": "keys.txt"},
        "pools": [
            {"name": "watched", "models": ["m"], "inferencePool": {"name": "llm", "namespace": "default"}},
            {"name": "static", "models": ["n"], "endpoints": ["127.0.0.1:1"]},
        ],
        "kubernetes": {"staleAfterSeconds": 150},
    }))  # fmt: skip
    return path


def _run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[int, list[Any]]:
    import kvgate.extproc.cli as epp_cli

    served: list[Any] = []

    async def epp_serve(*_a: Any, kube: Any = None, **_k: Any) -> None:
        served.append(kube)

    monkeypatch.setattr(epp_cli, "_serve", epp_serve)
    monkeypatch.setattr(logging, "basicConfig", lambda **_k: None)  # (caplog keeps the records)
    return epp_cli.main(argv), served


def test_shared_config_starts_the_epp_of_one_pool_warning_once_per_gateway_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kvgate.gateway.cli import _parser, build_config

    path = _shared(tmp_path)
    assert build_config(_parser().parse_args(["--config", str(path)])).port == 8000  # kvgate serve's file
    caplog.set_level(logging.WARNING, logger="kvgate.extproc.config")
    rc, served = _run(monkeypatch, ["--config", str(path), "--pool-name", "static", "--shared-config"])
    assert rc == 0 and served == [None]
    warned = [r.getMessage() for r in caplog.records if r.name == "kvgate.extproc.config"]
    assert [w.split(":")[0] for w in warned] == ["listen", "auth"], warned


def test_without_the_flag_the_shared_file_is_refused_naming_each_key_and_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, served = _run(monkeypatch, ["--config", str(_shared(tmp_path)), "--pool-name", "static"])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and not served
    assert [line.split(":")[1].strip() for line in lines[:2]] == ["listen", "auth"], lines
    assert "--shared-config" in lines[-1], lines


def test_shared_config_without_config_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, served = _run(monkeypatch, ["--endpoints", "127.0.0.1:1", "--shared-config"])
    assert rc == 2 and not served
    assert "--shared-config: only with --config" in capsys.readouterr().err
