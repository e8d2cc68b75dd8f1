"""Review s27-rev-fixes27a F4: the ``blockSize`` migration (qa27 Q1, 5a44d08f: characters / 4, tokens before).

1. The WARNING named only the reference's reading ("write blockSizeTokens: 16" for ``blockSize: 64``); a
   kvgate user whose 64 meant 64 tokens (documented so until 5a44d08f) needs ``blockSizeTokens: 64``: the
   line now says both.
2. Doing what it says on a hot reload (``blockSize: 64`` -> ``blockSizeTokens: 16``, the same 16-token
   blocks) threw the learnt prefix index away ("prefix index new"): ``gateway.reload._carry`` compared the
   raw parameters. Now the scorer's settings are compared (``PrefixCacheScorer.settings_of``), and the
   ``--workers`` gossip layout (``layout_id``) is built from them too, so workers agree it is unchanged.

All fail on 44e88aec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.reload import ConfigReloader, layout_id
from kvgate.scheduling.framework import Params, PluginHandle
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer


def test_the_warning_also_says_how_to_keep_the_old_token_meaning() -> None:
    params = Params({"blockSize": 64}, "plugins[0].parameters")
    PrefixCacheScorer.create("p", params, PluginHandle())
    (line,) = params.warnings
    assert "write blockSizeTokens: 16 (kvgate before qa27 Q1 read it as tokens: to keep that, write " in line
    assert line.endswith("blockSizeTokens: 64)"), line


def _doc(prefix: dict[str, Any]) -> dict[str, Any]:
    plugins = [{"type": "queue-scorer"}, {"type": "prefix-cache-scorer", "parameters": prefix}]
    picker = {
        "plugins": plugins,
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": p["type"]} for p in plugins]}],
    }
    pool = {"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"], "endpointPickerConfig": picker}
    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}


def _reload(tmp_path: Path, before: dict[str, Any], after: dict[str, Any]) -> tuple[Any, Any]:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc(before)))
    cfg = parse_gateway_config(_doc(before))
    pools = [build_pool(pc, index=i) for i, pc in enumerate(cfg.pools)]
    old = pools[0].director.handle.find(PrefixCacheScorer)
    rl = ConfigReloader(str(f), cfg, pools, None)
    f.write_text(yaml.safe_dump(_doc(after)))
    assert rl.reload()
    return old, pools[0].director.handle.find(PrefixCacheScorer)


def test_writing_what_the_warning_asks_keeps_the_prefix_index(tmp_path: Path) -> None:
    old, new = _reload(tmp_path, {"blockSize": 64}, {"blockSizeTokens": 16, "autoTune": True})
    assert new is not old and new.block_size == old.block_size == 16
    assert new.index is old.index


def test_another_block_size_still_gets_a_new_index(tmp_path: Path) -> None:
    old, new = _reload(tmp_path, {"blockSize": 64}, {"blockSizeTokens": 64})
    assert new.index is not old.index


def test_the_gossip_layout_reads_settings_not_spelling() -> None:
    def lid(prefix: dict[str, Any]) -> int:
        return layout_id(parse_gateway_config(_doc(prefix)).pools)

    assert lid({"blockSize": 64}) == lid({"blockSizeTokens": 16}) == lid({})
    assert lid({"blockSizeTokens": 32}) != lid({})
