"""Session fixtures for the real-vLLM suite (``pytest -m realvllm``): two vLLM CPU servers, started once.

The servers run the tiny local model with prefix caching, a small KV cache (64 blocks of 128 tokens, so
evictions happen) and KV events published to kvgate's subscribers (kvgate binds; vLLM connects) with a
replay socket. Startup takes ~2 minutes on 2 cores; teardown kills the process groups even on failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvgate.bench import ports as free
from kvgate.realvllm import harness
from kvgate.realvllm.bench import LoopThread
from kvgate.scheduling.plugins.precise_prefix import shared_index

from .fleet import INDEX_NAME, N_SERVERS, NUM_BLOCKS, RealFleet


@pytest.fixture(scope="session")
def real_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealFleet]:
    log_dir = Path(os.environ.get("KVGATE_REALVLLM_LOGS", str(tmp_path_factory.mktemp("vllm-logs"))))
    state = os.environ.get("KVGATE_REALVLLM_STATE")
    # Outside the kernel's ephemeral range and claimed (``kvgate.bench.ports``): vLLM binds its port ~2
    # minutes after the pick, and a port-0 pick (``harness.free_ports``) is any other process's port-0 bind
    # or outgoing connection's to take meanwhile. (With no spare ports: the port-0 picks.)
    ports = [free.free_port_group(1000) for _ in range(N_SERVERS)]
    if 0 in ports:
        ports = harness.free_ports(N_SERVERS, spread=1000)
    specs = [
        harness.ServerSpec(
            port=p, events_port=p + 1000, replay_port=p + 2000, num_gpu_blocks=NUM_BLOCKS, max_model_len=2048
        )
        for p in ports
    ]
    if state:
        specs = [harness.ServerSpec(**s) for s in json.loads(Path(state).read_text())]
    lt = LoopThread()
    index, manager = shared_index(INDEX_NAME, "engine")
    try:
        # Bind the subscribers first: vLLM's PUB connects to them as it starts.
        for s in specs:
            lt.run(
                manager.add(
                    f"127.0.0.1:{s.port}",
                    f"tcp://127.0.0.1:{s.events_port}",
                    bind=True,
                    replay_endpoint=f"tcp://127.0.0.1:{s.replay_port}",
                )
            )
        if state:
            # Servers already up (`python -m kvgate.realvllm up --state F`): reuse them, don't stop them.
            model = harness.model_dir()
            yield RealFleet([harness.VLLMServer(s, model, log_dir) for s in specs], lt, index, manager)
        else:
            with harness.fleet(specs, log_dir, timeout=900) as servers:
                yield RealFleet(servers, lt, index, manager)
    finally:
        lt.run(manager.close())
        lt.close()
