"""``scripts/tie_reseed.py`` replays a run with only the picker's tie-break RNG reseeded (review s14-mt):
the workload and every other plugin stay as they are, and the reseeded run is a run the policy could
have made itself."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from tie_reseed import reseeded_sim

from kvgate.bench.mixed import FAMILIES

FAM = dataclasses.replace(FAMILIES["c"], turns=(3, 4), think_s=1.0)


def _picker_rng(k: int) -> random.Random:
    sim = reseeded_sim(FAM, "sglang-cache-aware", 6.0, 7, k, duration=10.0, warmup=2.0)
    (profile,) = sim.director.profiles.values()
    assert profile.picker is not None
    return profile.picker.handle.rng


def test_k_reseeds_the_pickers_rng_and_k0_leaves_it() -> None:
    assert _picker_rng(2).getstate() == random.Random(2 * 7919 + 7).getstate()
    assert _picker_rng(0).getstate() != _picker_rng(2).getstate()
