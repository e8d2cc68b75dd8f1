"""Issue #12, expected by users: endpoints follow the config file without a restart (SIGHUP or a
change of the file), through the real ``kvgate serve`` process."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import yaml

from gateway.backend import free_port
from gateway.conftest import make_config, make_pools
from kvgate.gateway.reload import ConfigReloader

BODY = b'{"model":"m","prompt":"x","max_tokens":1}'


def _write(path, addresses):
    doc = {"pools": [{"name": "p", "endpoints": addresses, "models": ["m"], "policy": "round-robin"}]}
    path.write_text(yaml.safe_dump(doc))


def test_reload_syncs_endpoints_and_keeps_the_running_config_on_errors(tmp_path):
    f = tmp_path / "gw.yaml"
    _write(f, ["127.0.0.1:1001"])
    cfg = make_config(["127.0.0.1:1001"])
    pools = make_pools(cfg)
    kept = pools[0].store.get("127.0.0.1:1001")
    rl = ConfigReloader(str(f), cfg, pools)
    _write(f, ["127.0.0.1:1001", "127.0.0.1:1002"])
    assert rl.reload()
    assert {e.address for e in pools[0].endpoints()} == {"127.0.0.1:1001", "127.0.0.1:1002"}
    assert pools[0].store.get("127.0.0.1:1001") is kept  # same object: metrics, in-flight kept
    f.write_text("pools: [{name: p, endpoints: ['bad host'], models: [m]}]")
    assert not rl.reload() and rl.failures == 1
    assert len(pools[0].endpoints()) == 2
    _write(f, ["127.0.0.1:1002"])
    assert rl.reload()
    assert [e.address for e in pools[0].endpoints()] == ["127.0.0.1:1002"]


async def test_sighup_adds_an_endpoint_to_a_running_kvgate_serve(backends, tmp_path):
    a, b = await backends(2)
    port = free_port()
    f = tmp_path / "gw.yaml"
    _write(f, [a.address])
    doc = yaml.safe_load(f.read_text())
    doc["listen"] = {"host": "127.0.0.1", "port": port}
    f.write_text(yaml.safe_dump(doc))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--config", str(f), "--log-level", "WARNING",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/completions"
            for _ in range(200):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            for _ in range(4):
                async with s.post(url, data=BODY) as r:
                    assert r.status == 200
            assert not b.received
            doc["pools"][0]["endpoints"] = [a.address, b.address]
            f.write_text(yaml.safe_dump(doc))
            proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                await asyncio.sleep(0.1)
                async with s.post(url, data=BODY) as r:
                    assert r.status == 200
                if b.received:
                    break
            assert b.received, "the endpoint added to the file never got traffic"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
