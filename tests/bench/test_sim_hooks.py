"""``scripts/sim_hooks.py``: the forced-pick wrapper and the cold-burst tracking the diagnostic scripts
share (review s14-mt's tidy list)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from sim_hooks import Bursts, cached_tokens, force_pick

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import MixedFleetSim, mixed_sim
from kvgate.bench.workloads import RequestSpec

FAM = dataclasses.replace(FAMILIES["c"], turns=(3, 4), think_s=1.0)


def _sim() -> MixedFleetSim:
    return mixed_sim(FAM, "kvgate", 6.0, 7, duration=10.0, warmup=2.0)


def _dispatched(sim: MixedFleetSim) -> list[int]:
    picks: list[int] = []
    arrive = sim._arrive

    def watch(spec: Any) -> None:
        rid = f"r{sim._n}"
        arrive(spec)
        live = sim._live.get(rid)
        if live is not None:
            picks.append(live.index)

    sim._arrive = watch  # type: ignore[method-assign]
    sim.run()
    return picks


def test_force_pick_keeps_a_none_and_sends_an_endpoint() -> None:
    plain = _dispatched(_sim())
    kept = _sim()
    force_pick(kept, lambda req, res: None)
    assert _dispatched(kept) == plain
    last = _sim()
    force_pick(last, lambda req, res: last.endpoints[-1])
    assert set(_dispatched(last)) == {len(last.endpoints) - 1}
    assert len(set(plain)) > 1


def test_bursts_start_cold_on_empty_engines_and_group_within_a_second() -> None:
    sim = _sim()
    assert cached_tokens([r.engine for r in sim.replicas], list(range(1, 2000))) == [0] * len(sim.replicas)
    bursts = Bursts(sim, FAM)
    spec = RequestSpec(prompt_ids=list(range(1, FAM.tenant_prefix + 64)), max_tokens=8, group="t3")
    assert bursts.see(spec, 10.0) == (True, True)  # nothing cached anywhere: cold
    assert bursts.see(spec, 10.9) == (False, True)  # the same burst
    assert bursts.see(spec, 12.0) == (True, True)  # over 1 s after the burst began: a new one
    assert bursts.see(dataclasses.replace(spec, session="s1"), 12.1) is None
    assert bursts.see(dataclasses.replace(spec, group="other"), 12.1) is None
