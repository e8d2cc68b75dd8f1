"""A picker swap parses the new picker config once, and the running one not again (issue #16, tok31).

``ConfigReloader._plan`` built the new picker (one parse of its config) and then ``_carry`` parsed the old
and the new config again to compare their plugins, each parse ~0.5 ms of the event loop (its plugins are
built to check them), at every reload. Now the build and ``_carry`` share the one parse, and the running
picker's parsed config is kept from its build. Fails on main 691110b3 (3 parses at each reload).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.conftest import make_config, make_pools
from kvgate.gateway import pools as pools_mod
from kvgate.gateway.reload import ConfigReloader


def _picker(weight: int) -> dict[str, Any]:
    prefix = {"type": "prefix-cache-scorer", "parameters": {"blockSizeTokens": 16}}
    return {
        "plugins": [prefix, {"type": "queue-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": "prefix-cache-scorer", "weight": 2},
            {"pluginRef": "queue-scorer", "weight": weight},
        ]}],
    }  # fmt: skip


def _pools(weight: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "p",
            "endpoints": ["127.0.0.1:1001"],
            "models": ["m"],
            "endpointPickerConfig": _picker(weight),
        }
    ]


async def test_each_swap_parses_the_new_picker_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config([], extra={"pools": _pools(1)})
    pools = make_pools(cfg)
    parses: list[Any] = []
    real = pools_mod.parse_config

    def parse_config(doc: Any, **kw: Any) -> Any:
        parses.append(doc)
        return real(doc, **kw)

    monkeypatch.setattr(pools_mod, "parse_config", parse_config)
    f = tmp_path / "gw.yaml"
    rl = ConfigReloader(str(f), cfg, pools, None)
    counts = []
    for weight in (2, 3, 4):
        parses.clear()
        first = pools[0].director
        index = first.handle.plugins["prefix-cache-scorer"].index
        f.write_text(yaml.safe_dump({"pools": _pools(weight)}))
        assert await rl.areload()
        assert pools[0].director is not first, "not swapped"
        assert pools[0].director.handle.plugins["prefix-cache-scorer"].index is index, "the index not kept"
        counts.append(len(parses))
    # Only the new ones: the running picker's spec is the one its build kept (``Pool.spec``; rev-d31 F1).
    assert counts == [1, 1, 1], counts
