"""``kvgate serve --kv-events auto``: precise prefix routing where the servers publish KV events, found
from their own configuration (simulated vLLM replicas with KV events on and off)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.config.policies import KV_EVENTS_INDEX
from kvgate.datalayer.kvdetect import parse_server_info
from kvgate.datalayer.kvevents import token_keys
from kvgate.gateway import kv_auto
from kvgate.openai.request import render_chat
from kvgate.scheduling.plugins.precise_prefix import EVENTS_LABEL, shared_index
from kvgate.scheduling.tokenize import load
from kvgate.sim.server import Replica, ReplicaConfig
from kvgate.sim.tokenizer import tokenizer_dir


def test_server_info_shapes() -> None:
    binds = {"vllm_config": {"kv_events_config": {"enable_kv_cache_events": True, "publisher": "zmq",
             "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"},
             "model_config": {"tokenizer": "/models/x"}}}  # fmt: skip
    info = parse_server_info(binds, "10.0.0.7")
    assert info is not None and (info.endpoint, info.replay, info.bind) == (
        "tcp://10.0.0.7:5557", "tcp://10.0.0.7:5558", False)  # fmt: skip
    assert info.tokenizer == "/models/x"
    connects = {"vllm_config": {"kv_events_config": {"enable_kv_cache_events": True,
                "endpoint": "tcp://10.0.0.1:6000"}}}  # fmt: skip
    c = parse_server_info(connects, "10.0.0.7")
    assert c is not None and (c.endpoint, c.bind) == ("tcp://10.0.0.1:6000", True)
    off = {"vllm_config": {"kv_events_config": {"enable_kv_cache_events": False, "endpoint": "tcp://*:1"}}}
    assert parse_server_info(off, "h") is None
    assert parse_server_info({"vllm_config": {}}, "h") is None and parse_server_info([], "h") is None


def test_a_server_without_a_replay_buffer_is_followed_without_its_replay_socket() -> None:
    """vLLM with ``buffer_steps=0`` keeps a replay endpoint whose answers hold nothing
    (``deque(maxlen=0)``): its replay socket is not used (a gap resyncs at once). Failed before: used."""
    kv = {"enable_kv_cache_events": True, "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}
    for steps, replay in ((0, None), (10_000, "tcp://10.0.0.7:5558"), (None, "tcp://10.0.0.7:5558")):
        doc = {"vllm_config": {"kv_events_config": {**kv, "buffer_steps": steps}}}
        info = parse_server_info(doc, "10.0.0.7")
        assert info is not None and info.replay == replay, steps


def _served(replicas: list[Replica]) -> list[int]:
    return [sum(r.counters.finished.values()) for r in replicas]


async def _replicas(n: int, kv: bool) -> list[Replica]:
    cfg = dict(model="sim-model", time_scale=50.0, block_size=16)
    rs = [
        Replica(ReplicaConfig(**cfg, seed=i, kv_events_port=0 if kv else None), index=i)  # type: ignore[arg-type]
        for i in range(n)
    ]
    for r in rs:
        await r.start()
    return rs


async def test_replicas_without_kv_events_keep_the_approximate_index() -> None:
    rs = await _replicas(2, kv=False)
    try:
        cfg = make_config([f"127.0.0.1:{r.port}" for r in rs], models=("sim-model",), policy="kvgate")
        notes = await asyncio.to_thread(kv_auto.apply, cfg)
        assert cfg.pools[0].picker_config is None and "0/2" in notes[0]
    finally:
        for r in rs:
            await r.stop()


async def test_replicas_with_kv_events_get_precise_routing_by_default() -> None:
    """Each group's requests stay on one replica, routed on the blocks its engine reported.

    The waits are on what is asserted, not on time: after each round, until the engines' events for
    every group's prompt reached the index (the next round then routes on reported blocks, whatever the
    machine's load; it relied on them, or on the picks' 2 s speculative credit, arriving in time), and
    before the final check, on that group's blocks, not on any block of the process-wide index."""
    rs = await _replicas(3, kv=True)
    try:
        cfg = make_config([f"127.0.0.1:{r.port}" for r in rs], models=("sim-model",), policy="kvgate")
        notes = await asyncio.to_thread(kv_auto.apply, cfg)
        pc = cfg.pools[0]
        assert pc.picker_config is not None, notes
        assert all(pc.endpoint_labels[a][EVENTS_LABEL].startswith("tcp://127.0.0.1:") for a in pc.endpoints)
        index, _ = shared_index(KV_EVENTS_INDEX, "tokens")
        tok = load(str(tokenizer_dir()))

        def system(group: int) -> str:
            return f"You are assistant number {group}. " + f"Rule {group}: be brief. " * 60

        def reported(group: int) -> tuple[dict[str, int], int]:
            """Blocks of the group's rendered system prompt each endpoint reported (not merely credited:
            no clock), and how many are expected (the rendered chat hashes to the engines' blocks)."""
            ids = tok.encode(render_chat([{"role": "system", "content": system(group)}]))
            return index.longest_prefix(token_keys(ids, 16), pc.endpoints), len(ids) // 16 - 1

        def all_reported() -> bool:
            return all(max(held.values()) >= want for held, want in map(reported, range(3)))

        async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as http:
            url = base_url(gw) + "/v1/chat/completions"
            homes: dict[int, set[int]] = {}
            for turn in range(3):
                for group in range(3):
                    messages = [
                        {"role": "system", "content": system(group)},
                        {"role": "user", "content": f"q{turn}"},
                    ]
                    body = {"model": "sim-model", "max_tokens": 2, "messages": messages}
                    before = _served(rs)
                    async with http.post(url, json=body) as resp:
                        assert resp.status == 200, await resp.text()
                        await resp.read()
                    after = _served(rs)
                    homes.setdefault(group, set()).update(
                        i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a
                    )
                # The engines' events reached the index: 60 s, they cross ZMQ on a loaded machine.
                for _ in range(1200):
                    if all_reported():
                        break
                    await asyncio.sleep(0.05)
            held, want = reported(2)
            assert max(held.values()) >= want, held
            assert all_reported()
            assert all(len(h) == 1 for h in homes.values()), homes
    finally:
        for r in rs:
            await r.stop()


def _auto_config(
    path: Path,
    addresses: list[str],
    workers: int,
    limits: dict[str, int] | None = None,
    picker: dict[str, Any] | None = None,
) -> None:
    pool: dict[str, Any] = {"name": "p", "endpoints": addresses, "models": ["sim-model"]}
    if picker is not None:
        pool["endpointPickerConfig"] = picker
    doc = {
        "listen": {"host": "127.0.0.1", "port": 0, "adminPort": 0, "workers": workers},
        "limits": limits or {},
        "pools": [pool],
    }
    path.write_text(yaml.safe_dump(doc))


def _text(log: Path) -> str:
    return log.read_text()


def _logged(log: Path, text: str) -> int:
    """How many processes (the gateway, or each worker) logged ``text``."""
    return sum(text in line for line in _text(log).splitlines())


async def _until_logged(log: Path, text: str, n: int) -> None:
    for _ in range(300):  # 30 s
        if _logged(log, text) == n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not logged by {n} process(es): {_text(log)}")


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_after_kv_events_auto_applies_endpoints_without_a_restart_warning(tmp_path, workers):
    """``--kv-events auto`` rewrote the pool's picker at start-up; a reload of the same file (new
    endpoint, new limit) compares the file with the file, not with the rewrite, and applies silently;
    a real picker change is swapped live. Real ``kvgate serve``, one process and 2 workers."""
    rs = await _replicas(2, kv=True)
    a, b = (f"127.0.0.1:{r.port}" for r in rs)
    f, log = tmp_path / "gw.yaml", tmp_path / "stderr"
    _auto_config(f, [a], workers)
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", "--config", str(f), "--kv-events", "auto",
            "--log-level", "WARNING", stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        out: list[str] = []
        listening = re.compile(r"listening on http://127\.0\.0\.1:\d+.*admin on http://127\.0\.0\.1:(\d+)")
        while not (m := listening.search(out[-1] if out else "")):
            out.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
            assert out[-1], f"kvgate serve exited before listening: {out} {log.read_text()}"
        assert any("precise prefix routing" in line for line in out), out
        ready = "(2/2 workers)" if workers == 2 else ""
        async with aiohttp.ClientSession() as s:

            async def is_ready() -> bool:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with s.get(f"http://127.0.0.1:{m.group(1)}/readyz") as r:
                        return r.status == 200 and ready in await r.text()
                return False

            for _ in range(600):
                if await is_ready():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("kvgate serve never became ready")
        # The same pool, one more endpoint and a new limit: applied live, nothing to restart for.
        _auto_config(f, [a, b], workers, limits={"maxBodyBytes": 1024})
        proc.send_signal(signal.SIGHUP)
        applied = "config reload: limits applied: maxBodyBytes"  # logged after the pool comparison
        await _until_logged(log, applied, workers)
        assert _logged(log, f"endpoints +['{b}']") == workers
        assert "restart to apply" not in log.read_text()
        # A real change of the picker (the file's endpointPickerConfig, the policy unchanged) is swapped
        # live, from the precise picker --kv-events auto chose (no approximate prefix scorer in either:
        # with 2 workers the prefix gossip's layout is unchanged).
        profile = {"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}
        picker = {"plugins": [{"type": "queue-scorer"}], "schedulingProfiles": [profile]}
        _auto_config(f, [a, b], workers, limits={"maxBodyBytes": 1024}, picker=picker)
        proc.send_signal(signal.SIGHUP)
        swapped = "config reload: pool 'p' picker swapped (endpointPickerConfig -> endpointPickerConfig)"
        await _until_logged(log, swapped, workers)
        assert "restart to apply" not in log.read_text()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 60)
        for r in rs:
            await r.stop()
    assert proc.returncode == 0


async def test_a_precise_picker_swapped_by_a_reload_keeps_receiving_kv_events(tmp_path):
    """A reload swaps the precise picker ``--kv-events auto`` chose for another precise picker (same
    index, another scorer beside it): the new picker's subscriptions start before the swap, the old
    one's stop after it, and the engines' events still reach the index (a prompt sent after the swap is
    reported). Simulated replicas with KV events, ``kvgate serve``'s server in process."""
    from gateway.test_picker_reload import _write
    from kvgate.config.policies import precise_policy
    from kvgate.gateway.reload import ConfigReloader

    rs = await _replicas(2, kv=True)
    try:
        cfg = make_config([f"127.0.0.1:{r.port}" for r in rs], models=("sim-model",), policy="kvgate")
        file_cfg = make_config([f"127.0.0.1:{r.port}" for r in rs], models=("sim-model",), policy="kvgate")
        await asyncio.to_thread(kv_auto.apply, cfg)
        pc = cfg.pools[0]
        assert pc.picker_config is not None
        index, _ = shared_index(KV_EVENTS_INDEX, "tokens")
        tok = load(str(tokenizer_dir()))
        async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as http:
            pool = gw.pools[0]
            old, old_sources = pool.director, list(gw._pool_sources["p"])
            assert old_sources
            precise = precise_policy(str(tokenizer_dir() / "tokenizer.json"), bind=False)
            scorer = next(p for p in precise["plugins"] if p["type"] == "precise-prefix-cache-scorer")
            picker = {
                "plugins": [scorer, {"type": "queue-scorer"}],
                "schedulingProfiles": [{"name": "default", "plugins": [
                    {"pluginRef": scorer.get("name", scorer["type"])}, {"pluginRef": "queue-scorer"}]}],
            }  # fmt: skip
            f = tmp_path / "gw.yaml"
            _write(f, {"pools": [{"name": "p", "endpoints": pc.endpoints, "models": ["sim-model"],
                                  "endpointPickerConfig": picker}]})  # fmt: skip
            rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, file_cfg=file_cfg, server=gw)
            assert await rl.areload()
            assert pool.director is not old and gw._pool_sources["p"] and gw._pool_sources["p"] != old_sources
            assert all(s not in gw._scrapers for s in old_sources)
            system = "After the swap, a prompt no engine has seen. " * 40
            messages = [{"role": "system", "content": system}, {"role": "user", "content": "q"}]
            body = {"model": "sim-model", "max_tokens": 2, "messages": messages}
            async with http.post(base_url(gw) + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
            ids = tok.encode(render_chat([{"role": "system", "content": system}]))
            want = len(ids) // 16 - 1
            for _ in range(1200):  # 60 s: events cross ZMQ on a loaded machine
                if max(index.longest_prefix(token_keys(ids, 16), pc.endpoints).values()) >= want:
                    break
                await asyncio.sleep(0.05)
            assert max(index.longest_prefix(token_keys(ids, 16), pc.endpoints).values()) >= want
    finally:
        for r in rs:
            await r.stop()
