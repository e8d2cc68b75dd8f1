"""The benchmark's building blocks work (the benchmark itself is a script, not a test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvgate.bench import gateway_overhead as go
from kvgate.bench import peers


def test_peer_commands_and_launch_guards(tmp_path, monkeypatch):
    monkeypatch.setenv("KVGATE_PEERS_DIR", str(tmp_path))
    sg = peers.PEERS["sglang-router"]
    cmd = sg.command(
        peers.venv_python(sg), ["http://127.0.0.1:1", "http://127.0.0.1:2"], "cache_aware", "127.0.0.1", 30000
    )
    assert cmd[1:3] == ["-m", "sglang_router.launch_router"]
    assert cmd[cmd.index("--worker-urls") + 1 : cmd.index("--policy")] == [
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    ]
    vr = peers.PEERS["vllm-router"]
    assert Path(
        vr.command(peers.venv_python(vr), ["http://127.0.0.1:1"], "round_robin", "127.0.0.1", 1)[0]
    ).name == ("vllm-router")
    assert not peers.is_installed(sg)  # empty cache dir
    with pytest.raises(ValueError, match="only launched on"):
        peers.launch(sg, ["http://127.0.0.1:1"], policy="round_robin", port=1, host="0.0.0.0")
    with pytest.raises(ValueError, match="no policy"):
        peers.launch(sg, ["http://127.0.0.1:1"], policy="fastest", port=1)


async def test_backend_and_load_generator_round_trip():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(go._BackendProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await go._loadgen(port, 300, 8)
        assert result["requests"] == 300 and result["errors"] == 0
        assert result["p99_ms"] >= result["p50_ms"] > 0
    finally:
        server.close()
