"""Review rev-b34 F8: ``kvgate serve`` does not apply a parser chain with llm-d-router's
``passthrough-parser`` (it parses the paths it routes as OpenAI bodies, 404 for the others); as for the
other keys it cannot honour, it now says so in one WARNING line per pool load (before: nothing)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool

HEAD: dict[str, Any] = {"apiVersion": "llm-d.ai/v1alpha1", "kind": "EndpointPickerConfig"}
PROFILES = [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}]


def _picker(*parsers: str) -> dict[str, Any]:
    plugins = [{"type": t} for t in parsers] + [{"type": "queue-scorer"}]
    doc = {**HEAD, "plugins": plugins, "schedulingProfiles": PROFILES}
    if parsers:
        doc["requestHandler"] = {"parsers": [{"pluginRef": t} for t in parsers]}
    return doc


def _said(caplog: pytest.LogCaptureFixture, picker: dict[str, Any], announce: bool = True) -> list[str]:
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
    cfg = parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]})
    caplog.clear()
    build_pool(cfg.pools[0], announce=announce)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_kvgate_serve_warns_once_of_a_passthrough_chain(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for chain in (("passthrough-parser",), ("openai-parser", "passthrough-parser")):
        [line] = _said(caplog, _picker(*chain))
        assert line.startswith("pool p: endpointPickerConfig requestHandler.parsers passthrough-parser not "
                               "applied: kvgate serve parses"), line  # fmt: skip
        assert "kvgate epp applies it" in line
    assert _said(caplog, _picker("openai-parser")) == []  # (what kvgate serve does anyway)
    assert _said(caplog, _picker()) == []
    assert _said(caplog, _picker("passthrough-parser"), announce=False) == []  # (a reparse says nothing)
