"""s26-rev-fixqa26b F5: GIE's ``fairnessPolicyRef`` / ``orderingPolicyRef`` are ``string, omitempty``: an
empty value is "omitted" (the system default). Helm charts render ``fairnessPolicyRef: ""`` when a value
is unset;
kvgate refuses it (flowcontrol/config.py:210-221) instead of taking the band's default."""

from __future__ import annotations

from kvgate.flowcontrol.config import parse_flow_control


def test_empty_policy_ref_means_omitted() -> None:
    fc = parse_flow_control(
        {"priorityBands": [{"priority": 1, "fairnessPolicyRef": "", "orderingPolicyRef": ""}]}
    )
    assert (fc.band(1).fairness, fc.band(1).ordering) == (fc.fairness, fc.ordering)
