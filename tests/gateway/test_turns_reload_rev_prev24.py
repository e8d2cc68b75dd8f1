"""s24-rev-prev24 F5: ``limits.responseTurns`` is a ``LIMIT_KEYS`` key, so a config reload that changes it
is logged "config reload: limits applied: responseTurns 10000 -> 0" (no "restart" line) and written onto
the running ``cfg.limits``; but ``Proxy.turns`` is sized once, at start (gateway/proxy.py:297:
``ResponseTurns(cfg.limits.response_turns)``) and ``GatewayServer.apply_limits`` (server.py:532-555,
"Every knob applies without a restart") never touches it. An operator turning the table off (or sizing it
down for memory) by reload is told it applied while every turn is still kept."""

from __future__ import annotations

import aiohttp
import orjson
import yaml

from gateway.conftest import running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.config.gateway import load_gateway_config
from kvgate.gateway.reload import ConfigReloader


def _write(path, address: str, limits: dict) -> None:
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "limits": limits,
        "pools": [{"name": "p", "endpoints": [address], "models": ["m"], "policy": "round-robin"}],
    }
    path.write_text(yaml.safe_dump(doc))


async def test_a_reload_turning_response_turns_off_keeps_no_more_turns(tmp_path, caplog) -> None:
    async with serving(ResponsesStore("s0")) as (a,):
        f = tmp_path / "gw.yaml"
        _write(f, a.address, {})
        cfg = load_gateway_config(str(f))
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            rl = ConfigReloader(str(f), cfg, gw.pools, apply_limits=gw.apply_limits)
            url = f"http://127.0.0.1:{gw.port}/v1/responses"
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "one"})) as r:
                assert r.status == 200
            assert gw.proxy is not None and len(gw.proxy.turns) == 1  # (kept: the default 10,000)
            _write(f, a.address, {"responseTurns": 0})
            with caplog.at_level("WARNING", logger="kvgate.gateway.reload"):
                assert rl.reload()
            assert "responseTurns 10000 -> 0" in caplog.text and "restart" not in caplog.text
            assert gw.cfg.limits.response_turns == 0
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "two"})) as r:
                assert r.status == 200
            # Said applied: the kept turn trimmed at once (fixprev24), none kept after it (review: 2).
            assert len(gw.proxy.turns) == 0
