"""Review rev-c31 F3: ``kvgate bench flowcontrol --live --pack-misses`` / ``--prefill-alone`` were refused
as "simulator only", yet the same keys reach ``kvgate serve`` live through an arm's ``+pack`` / ``+alone``
(fc31). The flags now go through ``run_arm`` and ``gateway_config`` to the served config of every
``kvgate-reserve`` arm, as in the simulator. No process is started (the fleet and the gateway are replaced).
Fails on beb11387 (exit 2, "simulator only")."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.bench import flowcontrol_bench as fb
from kvgate.bench import flowcontrol_live as fl


class _Stop(Exception):
    pass


@pytest.mark.parametrize(("flag", "key"), [("--pack-misses", "packCertainMisses"),
                                           ("--prefill-alone", "prefillAlonePick")])  # fmt: skip
def test_the_live_flags_reach_the_served_config(monkeypatch: pytest.MonkeyPatch, flag: str, key: str) -> None:
    seen: list[dict[str, Any]] = []

    async def start_fleet(spec: Any) -> tuple[list[Any], list[str]]:
        return [], ["http://127.0.0.1:1"]

    async def start_gateway(doc: dict[str, Any], *a: Any, **k: Any) -> Any:
        seen.append(doc["pools"][0]["endpointPickerConfig"]["flowControl"])
        raise _Stop

    monkeypatch.setattr(fl, "start_fleet", start_fleet)
    monkeypatch.setattr(fl, "start_gateway", start_gateway)
    with pytest.raises(_Stop):
        fb.main(["--live", flag, "--base-rate", "1", "--mixes", "flood", "--arms", "kvgate-reserve-feasible"])
    assert seen and seen[0][key] is True and seen[0]["orderingPolicy"] == "slo-feasible"


def test_gateway_config_sets_the_keys_on_a_reserve_arm_only() -> None:
    def fc(arm: str) -> dict[str, Any]:
        doc = fl.gateway_config(arm, ["http://127.0.0.1:1"], 60.0, 16, pack_misses=True, prefill_alone=True)
        return doc["pools"][0]["endpointPickerConfig"].get("flowControl", {})

    reserve = fc("kvgate-reserve")
    assert reserve["packCertainMisses"] is True and reserve["prefillAlonePick"] is True
    assert "packCertainMisses" not in fc("reference") and "prefillAlonePick" not in fc("kvgate")
