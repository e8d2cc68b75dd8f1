"""Session 27's closing note: ``kvgate epp --config gw.yaml`` refused ``limits.drainTimeoutSeconds`` ("not
applied by kvgate epp"), so a gateway file's drain moved behind Envoy had to become the ``--drain-timeout``
flag. Now the key sets the EPP's drain as it sets ``kvgate serve``'s (its default 30 s, 0: no wait), the flag
over it, and a bad value is refused naming the key, exit 2; the drain's log lines name the key the value came
from. The key tests fail on main 2a9ab840 (exit 2: "limits.drainTimeoutSeconds: not applied by kvgate
epp")."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

import kvgate.extproc.cli as epp_cli
from kvgate.extproc.testing import Exchange, channel

from .test_epp_drain_serves_open_streams_qa27 import BODY, HEADERS, SSE, _server

POOL = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}


def _file(tmp_path: Path, limits: dict[str, Any] | None) -> str:
    path = tmp_path / "gw.yaml"
    doc: dict[str, Any] = {"pools": [POOL]}
    if limits is not None:
        doc["limits"] = limits
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str]]:
    """``_serve`` replaced: the args the EPP would serve with and where its drain came from, nothing bound."""
    out: list[tuple[Any, str]] = []

    async def fake(args: Any, *_a: Any, drain_from: str, **_k: Any) -> None:
        out.append((args, drain_from))

    monkeypatch.setattr(epp_cli, "_serve", fake)
    return out


@pytest.mark.parametrize(
    ("limits", "flag", "drain", "named"),
    [
        ({"drainTimeoutSeconds": 7}, None, 7.0, "limits.drainTimeoutSeconds"),
        ({"drainTimeoutSeconds": 0}, None, 0.0, "limits.drainTimeoutSeconds"),  # (no wait, as kvgate serve)
        ({"drainTimeoutSeconds": 7}, "3", 3.0, "--drain-timeout"),  # (the flag over the file)
        (None, None, 30.0, "limits.drainTimeoutSeconds"),  # (the key's default, kvgate serve's)
    ],
)
def test_the_config_s_drain_timeout_is_the_epp_s_drain(
    tmp_path: Path, served: list[tuple[Any, str]], capsys: pytest.CaptureFixture[str], limits: Any, flag: Any,
    drain: float, named: str,
) -> None:  # fmt: skip
    argv = ["--config", _file(tmp_path, limits), *(["--drain-timeout", flag] if flag else [])]
    rc = epp_cli.main(argv)
    assert rc == 0 and served, f"exit {rc}: {capsys.readouterr().err}"
    args, drain_from = served[0]
    assert args.drain_timeout == drain
    assert drain_from == named


def test_without_config_the_flag_s_default_stands(served: list[tuple[Any, str]]) -> None:
    assert epp_cli.main(["--endpoints", "127.0.0.1:9", "--model", "m"]) == 0
    assert served[0][0].drain_timeout == 30.0  # (the flag's default)
    assert served[0][1] == "--drain-timeout"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (-1, "must be >= 0, got -1"),
        ("30", "expected an integer or a number, got str"),
        (True, "expected an integer or a number, got a boolean"),
        (float("inf"), "must be a finite number"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key(
    tmp_path: Path, served: list[Any], capsys: pytest.CaptureFixture[str], value: Any, why: str
) -> None:
    rc = epp_cli.main(["--config", _file(tmp_path, {"drainTimeoutSeconds": value})])
    err = capsys.readouterr().err
    assert rc == 2 and not served, err
    assert f"kvgate epp: limits.drainTimeoutSeconds: {why}" in err, err


def test_the_gateway_only_limits_are_still_refused(
    tmp_path: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = epp_cli.main(["--config", _file(tmp_path, {"drainTimeoutSeconds": 5, "maxAttempts": 2})])
    err = capsys.readouterr().err
    assert rc == 2 and not served, err
    assert "limits.maxAttempts: not applied by kvgate epp" in err, err
    assert "limits.drainTimeoutSeconds:" not in err, err


async def test_the_drain_s_cut_names_the_key(caplog: pytest.LogCaptureFixture) -> None:
    """The server side: the grace and its source, as ``_serve`` passes them (``ServerOptions``)."""
    server = _server()
    server.options.grace_s, server.options.grace_from = 0.5, "limits.drainTimeoutSeconds"
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    stopped = False
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=60) as ex:
            assert (await ex.send_request(HEADERS, BODY)).destination == "127.0.0.1:9"
            await ex.send_response_headers(200, SSE, served="127.0.0.1:9")
            with caplog.at_level(logging.INFO, logger="kvgate.extproc.server"):
                t0 = time.monotonic()
                stopped = True
                await asyncio.wait_for(server.stop(), 60)
            assert time.monotonic() - t0 < 25  # (cut at the key's 0.5 s, not the default 30 s)
    finally:
        await ch.close()
        if not stopped:
            await server.stop(0)
    said = caplog.text
    assert "draining 1 open stream for up to 0.5s (limits.drainTimeoutSeconds)" in said, said
    assert "the drain deadline (0.5s, limits.drainTimeoutSeconds) cuts 1 stream still open" in said, said
