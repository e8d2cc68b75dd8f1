"""``scripts/overload_timeline.py``'s shortfall of a replica's queue head: the blocks its prompt needs
beyond the free ones, cached blocks still in use by a running request needing none (the engine's own
admission rule, so a head with a shortfall is exactly one the next step leaves waiting)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from overload_timeline import head_shortfall

from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.types import SimRequest


def _engine() -> Engine:
    e = Engine(EngineConfig(num_gpu_blocks=10, block_size=16))
    e.add_request(SimRequest("a", list(range(100)), max_tokens=40), 0.0)  # 7 blocks, running after a step
    e.step(0.0)
    assert e.num_running == 1 and e.pool.num_free == 3
    return e


def test_nothing_waiting_has_no_shortfall() -> None:
    assert head_shortfall(_engine()) == 0


def test_a_head_that_does_not_fit_waits_by_its_shortfall() -> None:
    e = _engine()
    e.add_request(SimRequest("b", list(range(1000, 1080)), max_tokens=4), 0.1)  # 5 blocks, 3 free
    assert head_shortfall(e) == 2
    e.step(0.1)
    assert e.num_waiting == 1  # the engine agrees: it does not fit


def test_blocks_shared_with_a_running_request_need_no_room() -> None:
    e = _engine()
    e.add_request(SimRequest("c", list(range(64)) + list(range(500, 516)), max_tokens=4), 0.1)  # 4 shared
    assert head_shortfall(e) == 0
    e.step(0.1)
    assert e.num_waiting == 0 and e.num_running == 2
