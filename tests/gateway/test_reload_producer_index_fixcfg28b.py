"""A hot reload and the index an ``approx-prefix-cache-producer`` builds for its consumers
(``<producer>#index``, outside handle.plugins): carried only while the producer's spec is unchanged.
Review s28-rev-fixes28a F2: a reload changing its ``blockSizeTokens`` carried the old index and its block
size (fails on a0bc120b); the carry when only another plugin's weight changes, and one index left on the
store after 5 reloads, are the controls."""

from __future__ import annotations

from typing import Any

import yaml

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.reload import ConfigReloader
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from picker_plugins import affinity_filter


def _doc(block: int, weight: int = 1) -> dict[str, Any]:
    picker = {
        "plugins": [
            {
                "type": "approx-prefix-cache-producer",
                "parameters": {"blockSizeTokens": block, "autoTune": False},
            },
            {"type": "prefix-cache-affinity-filter"},
            {"type": "queue-scorer", "name": "q"},
        ],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [
                    {"pluginRef": "prefix-cache-affinity-filter"},
                    {"pluginRef": "q", "weight": weight},
                ],
            }
        ],
    }
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"],
                   "endpointPickerConfig": picker}],
    }  # fmt: skip


def _prefix(pool: Any) -> PrefixCacheScorer:
    return affinity_filter(pool.director).prefix


def test_a_reload_changing_the_producers_block_size_applies_it(tmp_path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc(64)))
    pool = build_pool(parse_gateway_config(_doc(64)).pools[0])
    rl = ConfigReloader(str(f), parse_gateway_config(_doc(64)), [pool], None)
    assert _prefix(pool)._block_tokens([]) == 64 and _prefix(pool)._chunk_tokens == 64
    f.write_text(yaml.safe_dump(_doc(16)))
    assert rl.reload()
    new = _prefix(pool)
    assert new.block_size == 16
    assert new._chunk_tokens == 16, (
        f"the reloaded producer says 16-token blocks; its index still hashes {new._chunk_tokens}-token chunks"
    )


def test_reloads_leave_one_producer_index_on_the_store(tmp_path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(_doc(64)))
    pool = build_pool(parse_gateway_config(_doc(64)).pools[0])
    rl = ConfigReloader(str(f), parse_gateway_config(_doc(64)), [pool], None)
    first = _prefix(pool).index
    for w in range(2, 7):
        f.write_text(yaml.safe_dump(_doc(64, w)))
        assert rl.reload()
        assert _prefix(pool).index is first  # (the producer unchanged: its index carried)
    scorers = [
        getattr(fn, "__self__", None)
        for fn in pool.store.listeners
        if isinstance(getattr(fn, "__self__", None), PrefixCacheScorer)
    ]
    assert len(scorers) == 1, f"{len(scorers)} prefix indexes still listen to the store after 5 reloads"
