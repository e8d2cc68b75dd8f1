"""What the real-vLLM fixtures share with the tests: the fleet's shape and handles."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kvgate.datalayer.kvevents import BlockIndex, KVEventsManager
from kvgate.realvllm import harness
from kvgate.realvllm.bench import LoopThread

NUM_BLOCKS = 64
BLOCK = 128
INDEX_NAME = "realvllm"
N_SERVERS = int(os.environ.get("KVGATE_REALVLLM_SERVERS", "2"))


@dataclass
class RealFleet:
    servers: list[harness.VLLMServer]
    lt: LoopThread
    index: BlockIndex
    manager: KVEventsManager

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]
