"""A reload whose running picker's tokenizer file is gone since its build still swaps (review s31-rev-d31 F1).

``ConfigReloader._plan`` compares the running picker with the new one (``_carry``) on the running picker's
parsed config; at a pool's first reload (``_running_spec``: none kept from a build yet) it parses the
running picker's config again, which builds its plugins and so loads the tokenizer file it names. A file
removed (or replaced by an unreadable one) since the gateway started makes that parse raise, and the reload
that names a new, valid tokenizer is refused: the operator cannot move off the gone file without a restart.
Fails on main beb11387 (and before tok31: ``_carry`` parsed both configs at every reload).

Fixed (fixrevd31): the pool keeps the spec its build parsed (``Pool.spec``) and the reloader compares with
it; a pool without one (built by hand) whose running config no longer parses carries no index (a warning)
and still swaps. Both tests fail on d35e62a9 (``AssertionError: ['failed']``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import Pool, build_pool
from kvgate.gateway.reload import ConfigReloader
from kvgate.sim.tokenizer import tokenizer_dir


def _pools(tok: str, weight: int) -> list[dict[str, Any]]:
    prefix = {"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 16, "tokenizer": tok}}
    picker = {
        "plugins": [prefix, {"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "prefix-cache-scorer", "weight": 2},
            {"pluginRef": "queue-scorer", "weight": weight},
        ]}],
    }  # fmt: skip
    return [{"name": "p", "endpoints": ["127.0.0.1:1001"], "models": ["m"], "endpointPickerConfig": picker}]


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        d.mkdir()
        shutil.copy(tokenizer_dir() / "tokenizer.json", d / "tokenizer.json")
    return old, new


async def test_a_reload_swaps_when_the_running_pickers_tokenizer_file_is_gone(tmp_path: Path) -> None:
    old, new = _dirs(tmp_path)
    cfg = parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": _pools(str(old), 1)})
    pools = [build_pool(p) for p in cfg.pools]
    running = pools[0].director
    results: list[str] = []
    f = tmp_path / "gw.yaml"
    rl = ConfigReloader(str(f), cfg, pools, None)
    rl.on_result = results.append
    shutil.rmtree(old)  # the running picker's tokenizer is gone (a volume remounted, a snapshot pruned)
    f.write_text(yaml.safe_dump({"pools": _pools(str(new), 2)}))
    assert await rl.areload(), results
    assert pools[0].director is not running


async def test_a_pool_without_a_kept_spec_swaps_carrying_no_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = _dirs(tmp_path)
    cfg = parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": _pools(str(old), 1)})
    built = build_pool(cfg.pools[0])
    pools = [Pool(built.name, built.cfg, built.store, built.director, built.adapters)]  # (no spec kept)
    results: list[str] = []
    f = tmp_path / "gw.yaml"
    rl = ConfigReloader(str(f), cfg, pools, None)
    rl.on_result = results.append
    shutil.rmtree(old)
    f.write_text(yaml.safe_dump({"pools": _pools(str(new), 2)}))
    with caplog.at_level(logging.WARNING, logger="kvgate.gateway.reload"):
        assert await rl.areload(), results
    assert pools[0].director is not built.director
    assert "no longer parses" in caplog.text
    assert "prefix index new" in caplog.text
