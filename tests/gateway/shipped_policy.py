"""``kvgate serve`` in process on 127.0.0.1:0 with one pool ``p`` (model ``sim-model``) of listed replicas,
its picker a shipped EndpointPickerConfig file (``docs/benchmarks/policies``, ``deploy/examples``), and
that picker's prefix scorer: the set-up of the end-to-end picker tests (pending holders, cached-tokens
feedback, predicted latency)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import Pool, build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "docs" / "benchmarks" / "policies"
EXAMPLES = ROOT / "deploy" / "examples"


async def serve_policy(
    ports: Sequence[int], picker_file: str, *, base_dir: Path = POLICIES, scrape: bool = False
) -> tuple[GatewayServer, list[Pool]]:
    """The gateway over the replicas at ``ports`` with the picker ``base_dir/picker_file``, started (the
    caller stops it), and its pools."""
    pool = {
        "name": "p",
        "endpoints": [f"127.0.0.1:{port}" for port in ports],
        "models": ["sim-model"],
        "endpointPickerConfigFile": picker_file,
    }
    cfg = parse_gateway_config(
        {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}, base_dir=str(base_dir)
    )
    pools = [build_pool(p) for p in cfg.pools]
    gw = GatewayServer(cfg, pools, scrape=scrape)
    await gw.start()
    return gw, pools


def prefix_scorer(pool: Pool) -> PrefixCacheScorer:
    """The pool's picker's prefix-cache scorer."""
    return next(p for p in pool.director.handle.plugins.values() if isinstance(p, PrefixCacheScorer))
