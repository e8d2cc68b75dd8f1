"""Issue #12, expected by users: endpoints follow the config file without a restart (SIGHUP or a
change of the file), through the real ``kvgate serve`` process."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import orjson
import yaml

from gateway.conftest import make_config, make_pools, running_gateway
from kvgate.config.gateway import load_gateway_config
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


async def _serve(config, stderr=asyncio.subprocess.DEVNULL):
    """``kvgate serve --config`` on port 0 (the file's ``listen.port``); returns it and the port it
    printed (no port chosen here and bound there later: no race)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--config", str(config), "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=stderr,
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, "kvgate serve exited before listening"
        if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
            return proc, int(m.group(1))


async def _ready(s, port):
    """Wait for ``/readyz`` to answer 200 (sleeping between tries, whatever the answer); fail if never."""
    for _ in range(1200):  # (60 s: a gateway process on a loaded machine; 10 s before)
        try:
            async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("kvgate serve never became ready")


async def test_sighup_adds_an_endpoint_to_a_running_kvgate_serve(backends, tmp_path):
    a, b = await backends(2)
    f = tmp_path / "gw.yaml"
    _write(f, [a.address])
    doc = yaml.safe_load(f.read_text())
    doc["listen"] = {"host": "127.0.0.1", "port": 0}
    f.write_text(yaml.safe_dump(doc))
    proc, port = await _serve(f)
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/completions"
            await _ready(s, port)
            for _ in range(4):
                async with s.post(url, data=BODY) as r:
                    assert r.status == 200
            assert not b.received
            doc["pools"][0]["endpoints"] = [a.address, b.address]
            f.write_text(yaml.safe_dump(doc))
            proc.send_signal(signal.SIGHUP)
            for _ in range(600):  # (60 s for the process's reload; 10 s before)
                await asyncio.sleep(0.1)
                async with s.post(url, data=BODY) as r:
                    assert r.status == 200
                if b.received:
                    break
            assert b.received, "the endpoint added to the file never got traffic"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)


def _with_limits(path, addresses, port, limits):
    doc = {
        "listen": {"host": "127.0.0.1", "port": port},
        "limits": limits,
        "pools": [{"name": "p", "endpoints": addresses, "models": ["m"], "policy": "round-robin"}],
    }
    path.write_text(yaml.safe_dump(doc))


BIG = orjson.dumps({"model": "m", "prompt": "x" * 2000, "max_tokens": 1})  # over a 1 KiB cap, under 8 MiB


async def test_reload_applies_every_limit_to_the_running_server(backends, tmp_path, caplog):
    (a,) = await backends(1)
    f = tmp_path / "gw.yaml"
    _with_limits(f, [a.address], 0, {})
    cfg = load_gateway_config(str(f))
    async with running_gateway(cfg) as gw:
        rl = ConfigReloader(str(f), cfg, gw.pools, apply_limits=gw.apply_limits)
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, data=BIG) as r:
                assert r.status == 200
            new = {
                "maxBodyBytes": 1024,
                "maxConcurrentRequests": 7,
                "requestTimeoutSeconds": 30,
                "connectTimeoutSeconds": 2,
                "idleTimeoutSeconds": 9,
                "headerTimeoutSeconds": 3,
            }
            _with_limits(f, [a.address], 0, new)
            with caplog.at_level("WARNING", logger="kvgate.gateway.reload"):
                assert rl.reload()
            assert "config reload: limits applied: maxBodyBytes 8388608 -> 1024" in caplog.text
            assert "restart" not in caplog.text
            async with s.post(url, data=BIG) as r:  # the same request, refused live
                assert r.status == 413
                assert (await r.json())["error"]["type"] == "invalid_request_error"
            async with s.post(url, data=BODY) as r:  # a small one still goes
                assert r.status == 200
            assert gw.cfg.limits.max_concurrent_requests == 7 and gw.proxy is not None
            assert gw.proxy.request_timeout == 30
            assert (gw.proxy.upstream.connect_timeout, gw.proxy.upstream.idle_timeout) == (2, 9)
            assert {front.header_timeout_s for _, front in gw._servers} == {3}
            _with_limits(f, [a.address], 0, {})  # back to the defaults
            assert rl.reload()
            async with s.post(url, data=BIG) as r:
                assert r.status == 200


async def test_sighup_changes_the_body_cap_of_a_running_kvgate_serve(backends, tmp_path):
    (a,) = await backends(1)
    f = tmp_path / "gw.yaml"
    _with_limits(f, [a.address], 0, {"maxBodyBytes": 1 << 20})
    proc, port = await _serve(f, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/completions"
            await _ready(s, port)
            async with s.post(url, data=BIG) as r:
                assert r.status == 200
            _with_limits(f, [a.address], 0, {"maxBodyBytes": 1024})
            proc.send_signal(signal.SIGHUP)
            status = 200
            for _ in range(600):  # (60 s for the process's reload; 10 s before)
                async with s.post(url, data=BIG) as r:
                    status = r.status
                if status == 413:
                    break
                await asyncio.sleep(0.1)
            assert status == 413, "the lowered body cap never applied"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    assert "config reload: limits applied: maxBodyBytes 1048576 -> 1024" in err
    assert "restart to apply" not in err


def _full(path, addresses, **top):
    pool = {"name": "p", "endpoints": addresses, "models": ["m"], "policy": "round-robin"}
    pool.update(top.pop("pool", {}))
    path.write_text(yaml.safe_dump({"pools": [pool], **top}))


def test_every_change_a_reload_does_not_apply_is_logged_as_needing_a_restart(tmp_path, caplog):
    """The whole file less what a reload applies (endpoints, limits): each other key it changes is named
    in one "restart to apply" line, and named again at the next reload until a restart."""
    f, keys = tmp_path / "gw.yaml", tmp_path / "keys.txt"
    keys.write_text("k1 tenant-a\n")
    (tmp_path / "ca.pem").write_text("x")
    _full(f, ["127.0.0.1:1001"])
    cfg = load_gateway_config(str(f))
    rl = ConfigReloader(str(f), cfg, make_pools(cfg))
    _full(
        f,
        ["127.0.0.1:1001", "127.0.0.1:1002"],
        listen={"workers": 2, "port": 9999},
        hideInternalAddresses=True,
        rateLimits={"requestsPerMinute": 60},
        auth={"apiKeysFile": "keys.txt"},
        rewrites=[{"matches": [{"model": {"type": "Exact", "value": "x"}}],
                   "targets": [{"modelRewrite": "m", "weight": 1}]}],
        pool={"caFile": "ca.pem"},
    )  # fmt: skip
    for _ in range(2):
        caplog.clear()
        with caplog.at_level("WARNING", logger="kvgate.gateway.reload"):
            assert rl.reload()
        (line,) = [r.getMessage() for r in caplog.records if "restart to apply" in r.getMessage()]
        for key in ("listen.workers", "listen.port", "hideInternalAddresses", "rateLimits.requestsPerMinute",
                    "auth.apiKeysFile", "rewrites", "pools[p].caFile"):  # fmt: skip
            assert key in line, (key, line)
        assert "endpoints" not in line  # applied
    assert {e.address for e in rl.pools["p"].endpoints()} == {"127.0.0.1:1001", "127.0.0.1:1002"}


def test_not_applied_names_a_change_of_every_config_field():
    """A field added to the config later is reported by a reload unless it is applied live."""
    import dataclasses

    from kvgate.config.gateway import GatewayConfig, PoolConfig
    from kvgate.gateway.reload import not_applied

    base = make_config(["127.0.0.1:1001"])
    for f in dataclasses.fields(GatewayConfig):
        if f.name in ("pools", "limits"):
            continue
        new = make_config(["127.0.0.1:1001"])
        setattr(new, f.name, object())
        assert not_applied(base, new), f.name
    for f in dataclasses.fields(PoolConfig):
        if f.name in ("name", "endpoints"):
            continue
        new = make_config(["127.0.0.1:1001"])
        setattr(new.pools[0], f.name, object())
        assert not_applied(base, new) == [f"pools[p].{_yaml_name(f.name)}"], f.name
    new = make_config(["127.0.0.1:1001"])
    new.limits.max_body_bytes = 1
    assert not_applied(base, new) == [] and not_applied(base, new, limits_live=False) == ["limits"]


def _yaml_name(attr):
    from kvgate.gateway.reload import _POOL_NAMES

    return _POOL_NAMES.get(attr, attr)
