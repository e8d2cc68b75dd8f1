"""Issue #15's goal configuration as one document (fc31): docs/benchmarks/policies/kvgate-reserve-goal.yaml
is the bench's goal arm (``GOAL_ARM`` with ``GOAL_SETTINGS``, 4 x 128, TTL 30 s), since session 31 with
``flowControl.prefillAlonePick``, and kvgate builds a Director from it. Fails on 691110b3 (no file, no
``GOAL_ARM``)."""

from pathlib import Path

import yaml

from kvgate.bench.flowcontrol_bench import GOAL_ARM, GOAL_SETTINGS, arm_config
from kvgate.config.director import build_director
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore

POLICY = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "policies" / "kvgate-reserve-goal.yaml"


def test_the_policy_file_is_the_benchs_goal_arm_with_prefill_alone_pick():
    doc = yaml.safe_load(POLICY.read_text())
    assert doc == arm_config(GOAL_ARM, 30.0, max_concurrency=128, **GOAL_SETTINGS)
    fc = doc["flowControl"]
    assert fc["prefillAlonePick"] is True and "packCertainMisses" not in fc
    assert fc["orderingPolicy"] == "slo-feasible" and fc["fairShareRunningReserve"] is True


def test_kvgate_builds_a_director_with_flow_control_from_it():
    doc = yaml.safe_load(POLICY.read_text())
    d = build_director(doc, EndpointStore([Endpoint(address="10.0.0.1:8000")]), clock=lambda: 0.0, seed=0,
                       flow_metrics=False)  # fmt: skip
    assert d.flow is not None and d.flow.ctl.cfg.prefill_alone_pick
    assert d.flow.ctl.cfg.fair_share_headroom == 0.75
