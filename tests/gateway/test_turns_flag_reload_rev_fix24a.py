"""s24-rev-fix24a F2: ``kvgate serve --config F --response-turns 0`` (the table off by the flag, which
"overrides limits.responseTurns"), then any reload of F (here: one endpoint added) resizes the table to the
file's 10,000: ``reload_loader`` keeps ``--max-buffered-bytes`` over the file, not ``--response-turns``,
and since fixprev24 (13fbd46f: ``apply_limits`` -> ``ResponseTurns.resize``) the file's value applies at
once, logged "limits applied: responseTurns 0 -> 10000" though nobody changed it. Before 13fbd46f the
flag's size held until restart."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
import yaml

from gateway.conftest import running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.config.gateway import load_gateway_config
from kvgate.gateway.cli import _parser, build_config, reload_loader
from kvgate.gateway.reload import ConfigReloader


def _write(path, addresses: list[str]) -> None:
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [{"name": "p", "endpoints": addresses, "models": ["m"], "policy": "round-robin"}],
    }
    path.write_text(yaml.safe_dump(doc))


@pytest.mark.asyncio
async def test_a_reload_keeps_the_response_turns_flag(tmp_path) -> None:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as (a, b):
        f = tmp_path / "gw.yaml"
        _write(f, [a.address])
        args = _parser().parse_args(["--config", str(f), "--response-turns", "0"])
        file_cfg = load_gateway_config(str(f))
        cfg = build_config(args, file_cfg)
        assert cfg.limits.response_turns == 0
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            assert gw.proxy is not None
            rl = ConfigReloader(
                str(f),
                cfg,
                gw.pools,
                apply_limits=gw.apply_limits,
                file_cfg=file_cfg,
                load=reload_loader(args),
            )
            _write(f, [a.address, b.address])  # (an endpoint added: nothing about the turns)
            assert rl.reload()
            url = f"http://127.0.0.1:{gw.port}/v1/responses"
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "one"})) as r:
                assert r.status == 200
            assert (gw.proxy.turns.max_entries, len(gw.proxy.turns)) == (0, 0)
