"""What the fleet-simulator diagnostic scripts share: a mixed family named on the command line
(``burst_homes.py``, ``family_variant.py``, ``index_calibration.py``, ``request_traces.py``), the
``FAMILY QPS [SEED] [POLICY]`` arguments of one mixed run (``cold_bursts.py``, ``session_moves.py``) and
one scenario's seeded fleet run (``tail_breakdown.py``, ``request_traces.py``, ``placement_oracles.py``)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from kvgate.bench.fleetsim import FleetConfig, FleetSim
from kvgate.bench.mixed import FAMILIES, Family
from kvgate.bench.scenarios import Scenario
from kvgate.bench.sweep import _count


def family(arg: str) -> Family:
    """``FAMILY`` or ``FAMILY:field=N,...``: the mixed family, with those (integer) fields changed (a
    tuning-side variant that shares one trait of another family, e.g. ``a:tenant_prefix=4096``)."""
    name, _, changes = arg.partition(":")
    fam = FAMILIES[name]
    if changes:
        pairs = (c.split("=") for c in changes.split(","))
        fields: dict[str, Any] = {k: int(v) for k, v in pairs}
        fam = dataclasses.replace(fam, **fields)
    return fam


def mixed_run_args() -> tuple[Family, str, float, int]:
    """``FAMILY QPS [SEED] [POLICY]`` from the command line (seed 1, policy ``kvgate`` when left out):
    the family, the policy, the rate and the seed of one mixed run."""
    fam = FAMILIES[sys.argv[1]]
    qps = float(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    policy = sys.argv[4] if len(sys.argv) > 4 else "kvgate"
    return fam, policy, qps, seed


def scenario_sim(sc: Scenario, policy: str, qps: float, seed: int, duration: float) -> FleetSim:
    """A fleet of ``sc``'s replicas under ``policy``: its warm-up, TTFT SLO and seeded workload at
    ``qps``, ``duration`` seconds measured."""
    cfg = FleetConfig(
        replicas=sc.replicas,
        policy=policy,
        qps=qps,
        duration=duration,
        warmup=sc.warmup,
        slo_ttft=sc.slo_ttft,
        seed=seed,
        max_requests=_count(qps, sc.warmup + duration),
    )
    return FleetSim(cfg, sc.workload(seed, cfg.max_requests))
