"""Review s27-rev-fixes27a F1: a picker config's WARNING lines are said once per load.

qa27 Q1 / Q4 said "one WARNING line ... logged once per load", but every ``parse_config`` logged, and
``kvgate serve`` reparses a pool's EndpointPickerConfig to compare and lay it out: ``_carry``'s
``picker_spec`` of the old and the new config, ``prefix_layout`` / ``layout_id``; with ``--workers`` each
worker's build and reload said it again beside the supervisor's (the review measured 5 lines at start with
2 workers, 9 for one SIGHUP, the old file's among them). Now only a load of the pool's picker says it
(``build_director_for``), and a ``--workers`` worker's builds do not (its supervisor's did). Both fail on
44e88aec (4 lines for one in-process swap; a worker had no way to leave it to its supervisor).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.cli import build_pools
from kvgate.gateway.reload import ConfigReloader, check_pickers, layout_id

LOGGER = "kvgate.config.picker"


def _doc(extra: list[dict[str, Any]]) -> dict[str, Any]:
    plugins = [
        {"type": "queue-scorer"},
        *extra,
        {"type": "prefix-cache-scorer", "parameters": {"blockSize": 64}},
    ]
    picker = {
        "plugins": plugins,
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": p["type"]} for p in plugins]}],
    }
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and "parameters.blockSize:" in r.getMessage()
    ]


def test_a_picker_swap_says_the_new_configs_line_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc([])))
    cfg = parse_gateway_config(_doc([]))
    pools = build_pools(cfg)
    assert len(_lines(caplog)) == 1  # (the start's load)
    layout_id(cfg.pools)
    rl = ConfigReloader(str(f), cfg, pools, None)
    f.write_text(yaml.safe_dump(_doc([{"type": "kv-cache-utilization-scorer"}])))
    caplog.clear()
    assert rl.reload()
    assert [line.split(":")[0] for line in _lines(caplog)] == [
        "plugins[2].parameters.blockSize"
    ]  # the new file's
    caplog.clear()
    layout_id(cfg.pools)  # (a worker's gossip relayout after the swap)
    assert _lines(caplog) == []


def test_a_workers_builds_and_reloads_leave_it_to_the_supervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc([])))
    cfg = parse_gateway_config(_doc([]))
    pools = build_pools(cfg, announce=False)
    rl = ConfigReloader(str(f), cfg, pools, None, announce=False)
    new = _doc([{"type": "kv-cache-utilization-scorer"}])
    f.write_text(yaml.safe_dump(new))
    assert rl.reload()
    layout_id(cfg.pools)
    assert _lines(caplog) == []
    # The supervisor's check of the new file (``check_pickers``) is what says it, once.
    assert check_pickers(parse_gateway_config(_doc([])), parse_gateway_config(new)) == ["p"]
    assert len(_lines(caplog)) == 1
