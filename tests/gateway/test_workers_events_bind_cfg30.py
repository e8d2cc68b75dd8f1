"""``eventsBind: true`` (the gateway binds each engine's KV-event address) with more than one worker: every
worker subscribes to the engines itself and only one process can bind an address, so the others retried
for good and never saw an event, and a reload changing the precise scorer's ``mode`` (a new index, whose
subscriber binds the address again) raced them for it; the ``--workers`` supervisor's check (which starts
no subscriber) passed it on. Now refused at the start and at a reload (the supervisor's load), the error
naming the key; one worker, or ``eventsBind: false``, loads. Fails on 6d96a979: accepted (cfg30)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvgate.config.gateway import GatewayConfigError
from kvgate.gateway.cli import _parser, build_config, main, reload_loader

KEY = r"^pools\[0\]\.endpointPickerConfig\.plugins\[1\]\.parameters\.eventsBind"


def _file(path: Path, *, workers: int, bind: bool, mode: str = "engine") -> None:
    params = {"mode": mode, "eventsBind": bind, "eventsPortOffset": 1000, "indexName": "cfg30-bind"}
    picker = {
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "precise-prefix-cache-scorer", "parameters": params},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": "queue-scorer"}, {"pluginRef": "precise-prefix-cache-scorer"}],
            }
        ],
    }
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0, "workers": workers},
        "pools": [
            {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
        ],
    }
    path.write_text(yaml.safe_dump(doc))


def test_the_start_refuses_events_bind_with_workers(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    _file(f, workers=1, bind=True)
    with pytest.raises(GatewayConfigError, match=KEY):
        build_config(_parser().parse_args(["--config", str(f), "--workers", "2", "--kv-events", "off"]))
    _file(f, workers=2, bind=True)
    with pytest.raises(GatewayConfigError, match=KEY + r": true with 2 workers"):
        build_config(_parser().parse_args(["--config", str(f), "--kv-events", "off"]))
    assert main(["--config", str(f), "--kv-events", "off"]) == 2  # (a config error: nothing started)
    build_config(_parser().parse_args(["--config", str(f), "--workers", "1", "--kv-events", "off"]))
    _file(f, workers=2, bind=False)
    assert build_config(_parser().parse_args(["--config", str(f), "--kv-events", "off"])).workers == 2


def test_the_supervisors_reload_refuses_a_mode_change_that_binds(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    _file(f, workers=2, bind=False)
    args = _parser().parse_args(["--config", str(f), "--kv-events", "off"])
    build_config(args)
    load = reload_loader(args)  # (the supervisor's read of each changed file)
    _file(f, workers=2, bind=False, mode="tokens")
    load(str(f))  # a mode change the engines' own binds serve: accepted
    _file(f, workers=2, bind=True, mode="tokens")
    with pytest.raises(GatewayConfigError, match=KEY):
        load(str(f))
