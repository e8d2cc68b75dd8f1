"""s19-qa M2: ``kvgate epp --config gw.yaml`` parsed ``kvgate serve``'s whole file and applied only part of
it: ``auth`` (API keys), ``rateLimits``, most ``limits`` (``maxConcurrentRequests``,
``requestTimeoutSeconds``, ...), ``hideInternalAddresses``, ``listen``, most ``health`` were accepted and
silently not enforced (three keyless concurrent requests through the EPP: 200, 200, 200), and so were
``--endpoints``, ``--model``, ``--engine``, ``--adapter``, ``--policy`` beside ``--config``. Each is refused
now, exit 2, one line naming it and why; the keys the EPP applies start as before (docs/epp.md lists them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import kvgate.extproc.cli as epp_cli

POOL = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}


def _file(tmp_path: Path, **extra: Any) -> str:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"pools": [POOL], **extra}))
    return str(path)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """``_serve`` replaced: what the EPP would serve with (args, store, ctx), nothing bound."""
    out: list[tuple[Any, ...]] = []

    async def fake(args: Any, store: Any, ctx: Any, *_a: Any, **_k: Any) -> None:
        out.append((args, store, ctx))

    monkeypatch.setattr(epp_cli, "_serve", fake)
    return out


@pytest.mark.parametrize(
    "extra,key",
    [
        ({"auth": {"apiKeysEnv": "KEYS"}}, "auth"),
        ({"rateLimits": {"requestsPerMinute": 1}}, "rateLimits"),
        ({"limits": {"maxConcurrentRequests": 1}}, "limits.maxConcurrentRequests"),
        ({"limits": {"requestTimeoutSeconds": 5}}, "limits.requestTimeoutSeconds"),
        ({"limits": {"maxAttempts": 1}}, "limits.maxAttempts"),
        ({"hideInternalAddresses": True}, "hideInternalAddresses"),
        ({"listen": {"workers": 4}}, "listen"),
    ],
)
def test_a_gateway_only_key_is_refused_naming_it(
    tmp_path: Path, served: list[Any], capsys: pytest.CaptureFixture[str], extra: dict[str, Any], key: str
) -> None:
    rc = epp_cli.main(["--config", _file(tmp_path, **extra)])
    err = capsys.readouterr().err
    assert rc == 2 and not served, f"`{key}` accepted by kvgate epp --config and not applied: {err}"
    assert f"kvgate epp: {key}: not applied by kvgate epp" in err, err


def test_each_refused_key_and_flag_has_its_line(
    tmp_path: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, auth={"apiKeysEnv": "K"}, limits={"maxBodyBytes": 1000, "maxConnections": 9})
    argv = ["--config", path, "--endpoints", "127.0.0.1:10", "--model", "zz", "--adapter", "a", "--engine",
            "sglang", "--policy", "random"]  # fmt: skip
    assert epp_cli.main(argv) == 2 and not served
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        "--endpoints", "--model", "--adapter", "--engine", "--policy", "auth", "limits.maxConnections",
    ]  # fmt: skip
    assert "--shared-config" in lines[-1]  # (the opt-in for a file shared with kvgate serve: s19-gw M1)
    assert all(line.startswith("kvgate epp: ") for line in lines)
    assert "not with --config (the pool comes from the file: pools[].endpoints)" in lines[0]


def test_the_keys_the_epp_applies_start_and_take_effect(
    tmp_path: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(
        tmp_path,
        limits={"maxBodyBytes": 1000, "maxBufferedBytes": 5000},
        health={"scrapeFailures": 2, "metricsStalenessSeconds": 7},
        scrapeIntervalSeconds=0.25,
        objectives=[{"name": "batch", "priority": -1}],
        sessionHeader="x-s",
        rewriteSeed=3,
        hideInternalAddresses=False,
    )
    assert epp_cli.main(["--config", path]) == 0, capsys.readouterr().err
    args, _store, ctx = served[-1]
    assert args.scrape_interval == 0.25 and ctx.budget.limit == 5000 and ctx.max_request_body == 1000
    assert ctx.policy.session_header == "x-s" and ctx.policy.objectives == {"batch": -1}
    # The flags still override the file's scrape interval and byte budget.
    argv = ["--config", path, "--scrape-interval", "0.5", "--max-buffered-bytes", "7000"]
    assert epp_cli.main(argv) == 0
    args, _store, ctx = served[-1]
    assert args.scrape_interval == 0.5 and ctx.budget.limit == 7000


def test_the_flags_alone_keep_their_defaults(served: list[Any]) -> None:
    assert epp_cli.main(["--endpoints", "127.0.0.1:9", "--model", "m", "--policy", "random"]) == 0
    args, _store, ctx = served[-1]
    assert args.scrape_interval == 0.05 and ctx.budget.limit == 1 << 30


def test_the_process_exits_2(tmp_path: Path) -> None:
    """The QA's case through the real command line (it started and answered 200, 200, 200 keyless)."""
    path = _file(tmp_path, auth={"apiKeysEnv": "KEYS"})
    proc = subprocess.run(
        [sys.executable, "-m", "kvgate.cli", "epp", "--config", path, "--plaintext", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-600:]
    assert "kvgate epp: auth: not applied by kvgate epp" in proc.stderr
