"""The routers the live benchmark compares: kvgate (``kvgate serve`` with named or precise policies) and
the peer routers installed from PyPI (see ``kvgate.bench.live``)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from kvgate.bench import procs
from kvgate.bench.live_fleet import KV_EVENTS_OFFSET, MODEL
from kvgate.bench.procs import Proc

# ---- routers -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    name: str
    kind: str  # "kvgate" | "sglang-router" | "vllm-router"
    policy: str  # a kvgate policy, a key of PICKER_CONFIGS (kvgate serve --config), or a peer's policy
    base_url: str | None = None
    proc: Proc | None = None
    skipped: str | None = None  # why it could not run


KVGATE_TARGETS = [
    Target("kvgate (default)", "kvgate", "kvgate"),
    Target("kvgate reference 2/2/3", "kvgate", "reference"),
    Target("kvgate reference + precise", "kvgate", "reference-precise"),
    # The default policy on ``kvgate serve --workers 2`` (in-flight counts shared, prefix index per
    # worker): hit rate and TTFT against one process in the same run (``--policies kvgate,kvgate@w2``).
    Target("kvgate (default), 2 workers", "kvgate", "kvgate@w2"),
    Target("round robin (kvgate)", "kvgate", "round-robin"),
    Target("least request (kvgate)", "kvgate", "least-request"),
]
PEER_TARGETS = [
    Target("sglang-router cache_aware", "sglang-router", "cache_aware"),
    Target("sglang-router round_robin", "sglang-router", "round_robin"),
    Target("vllm-router cache_aware", "vllm-router", "cache_aware"),
]

# ``kvgate-cost-scorer`` reads the precise scorer's matches when ``prefixPluginRef`` names it (helper B,
# issue #6); ``_with_precise`` keeps the replaced plugin's name. None would drop the target below.
KVGATE_COST_PRECISE_PARAMS: dict[str, Any] | None = {"prefixPluginRef": "prefix-cache-scorer"}
if KVGATE_COST_PRECISE_PARAMS is not None:
    KVGATE_TARGETS.insert(1, Target("kvgate default + precise", "kvgate", "kvgate-precise"))


def precise_scorer_params(offset: int = KV_EVENTS_OFFSET) -> dict[str, Any]:
    """``precise-prefix-cache-scorer`` parameters for the live fleet (see ``kvgate.bench.simproc``)."""
    from kvgate.sim.tokenizer import tokenizer_dir

    return {
        # The simulator's engine publishes its own chained xxh64 block hashes, not vLLM's: key blocks
        # by their token ids instead, with the simulator's own tokenizer on the prompt text.
        "mode": "tokens",
        "tokenizer": str(tokenizer_dir()),
        "eventsPortOffset": offset,
        "eventsBind": False,  # the simulator binds its PUB socket; the gateway connects
        "replayPortOffset": 2 * offset,
        "indexName": "live",
    }


def _with_precise(doc: dict[str, Any], offset: int) -> dict[str, Any]:
    """``doc`` (a picker config) with its prefix scorer replaced by the precise one, live parameters."""
    for plugin in doc.get("plugins") or []:
        if plugin.get("type") in ("prefix-cache-scorer", "precise-prefix-cache-scorer"):
            old = plugin.get("name") or plugin["type"]
            plugin["type"] = "precise-prefix-cache-scorer"
            plugin["name"] = old  # keep the profile's pluginRef valid
            plugin["parameters"] = {**(plugin.get("parameters") or {}), **precise_scorer_params(offset)}
    return doc


def picker_config(policy: str, offset: int = KV_EVENTS_OFFSET) -> dict[str, Any]:
    """The ``EndpointPickerConfig`` mapping of a generated live policy (PICKER_CONFIGS): the precise
    benchmark's profile of that name (``bench/precise.py``), its precise scorer pointed at the live fleet."""
    from kvgate.bench.precise import PRECISE_POLICIES

    if policy not in PICKER_CONFIGS:
        raise KeyError(f"no generated picker config {policy!r}")
    if policy in PRECISE_POLICIES:
        return _with_precise(yaml.safe_load(PRECISE_POLICIES[policy]), offset)
    if policy == "kvgate-precise" and KVGATE_COST_PRECISE_PARAMS is not None:
        # kvgate's default profile with the precise scorer as its prefix plugin.
        from kvgate.config.policies import POLICIES

        doc = _with_precise(yaml.safe_load(POLICIES["kvgate"]), offset)
        for plugin in doc["plugins"]:
            if plugin["type"] == "kvgate-cost-scorer":
                plugin["parameters"] = {**(plugin.get("parameters") or {}), **KVGATE_COST_PRECISE_PARAMS}
        return doc
    raise KeyError(f"no generated picker config {policy!r}")


PICKER_CONFIGS = ("reference-precise", "kvgate-precise")


def gateway_config(policy: str, urls: Sequence[str], offset: int = KV_EVENTS_OFFSET) -> dict[str, Any]:
    """A ``kvgate serve --config`` document: one pool over ``urls`` with a generated picker config."""
    return {  # listen address: ``kvgate serve --host/--port`` flags
        "pools": [
            {
                "name": "default",
                "endpoints": list(urls),
                "models": [MODEL],
                "endpointPickerConfig": picker_config(policy, offset),
            }
        ],
    }


async def start_kvgate(
    policy: str, urls: list[str], wait_s: float = 60.0, kv_offset: int = KV_EVENTS_OFFSET
) -> tuple[Proc, str]:
    # ``POLICY@wN``: the same policy on N worker processes.
    policy, _, workers = policy.partition("@w")
    common: tuple[str, ...] = ("--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING")
    if workers:
        common += ("--workers", workers)
    if policy in PICKER_CONFIGS:
        fd, path = tempfile.mkstemp(prefix=f"kvgate-live-{policy}-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(gateway_config(policy, urls, kv_offset), f)
        cmd = procs.kvgate_cmd("serve", "--config", path, *common)
    else:
        path = ""
        cmd = procs.kvgate_cmd(
            "serve", "--endpoints", ",".join(urls), "--model", MODEL, "--policy", policy, *common
        )
    ready = r"listening on (http://[\d.]+:\d+)"
    try:
        proc, m = await procs.start(f"kvgate serve {policy}", cmd, ready, wait_s=wait_s)
    finally:
        if path:  # read at start-up only
            os.unlink(path)
    return proc, m[0].group(1)


async def start_peer(t: Target, urls: list[str], wait_s: float = 120.0) -> tuple[Proc, str]:
    """A peer router from ``kvgate.bench.peers`` (installed once into a cached venv), on 127.0.0.1.

    The simulator answers ``/model_info`` with its tokenizer directory as ``model_path``, which is
    what sglang-router loads; ``HF_HUB_OFFLINE=1`` makes sure nothing is fetched instead.
    """
    from kvgate.bench import peers

    peer = peers.PEERS[t.kind]
    python = await asyncio.to_thread(peers.ensure_installed, peer)
    port = procs.free_port()
    cmd = peer.command(python, urls, t.policy, "127.0.0.1", port)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RUST_LOG": "warn", "NO_PROXY": "*"}
    proc, _ = await procs.start(t.name, cmd, None, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        await procs.wait_http(base + "/health", wait_s=wait_s)
    except RuntimeError as e:
        await proc.stop()
        raise RuntimeError(f"{e}; last output: {proc.tail(5)}") from None
    return proc, base
