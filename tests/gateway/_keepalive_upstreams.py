"""What the upstream connection-retirement tests share (``test_upstream_retire_qa28``, ``_c28``,
``_move_c28``, ``test_upstream_idle_sweeps_c28``): an OpenAI-style backend that keeps its connections
alive for an hour (as the simulator's aiohttp does) and counts them, a raw request for
``UpstreamPool.request``, and a gateway started from a config (written where a ``ConfigReloader`` reads)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from kvgate.config.gateway import GatewayConfig, parse_gateway_config
from kvgate.gateway.pools import Pool, build_pool
from kvgate.gateway.server import GatewayServer

HEAD = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"
ANSWER = {
    "id": "cmpl-1", "object": "text_completion", "model": "m",
    "choices": [{"index": 0, "text": "x", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip


async def keepalive_backend(gate: asyncio.Event | None = None) -> tuple[web.AppRunner, str]:
    """The backend (bound to port 0, read back) and its address; answers ``ANSWER`` once ``gate`` is set."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if gate is not None:
            await gate.wait()
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/completions", answer)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=3600, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}"


def open_connections(runner: web.AppRunner) -> int:
    """The backend's open connections (the gateway's, kept alive or not)."""
    assert runner.server is not None
    return len(runner.server.connections)


def pools_doc(*pools: tuple[str, list[str], str]) -> dict[str, Any]:
    """A gateway config of round-robin pools, each ``(name, endpoints, model)``."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {"name": n, "endpoints": eps, "models": [m], "policy": "round-robin"} for n, eps, m in pools
        ],
    }


def write_doc(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` written to ``path`` as YAML (what a ``ConfigReloader`` reads), returned."""
    path.write_text(yaml.safe_dump(doc))
    return doc


async def started_gateway(doc: dict[str, Any]) -> tuple[GatewayConfig, list[Pool], GatewayServer]:
    """A gateway started from ``doc`` (no scrapes); the caller stops it."""
    cfg = parse_gateway_config(doc)
    pools = [build_pool(p) for p in cfg.pools]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    return cfg, pools, gw
