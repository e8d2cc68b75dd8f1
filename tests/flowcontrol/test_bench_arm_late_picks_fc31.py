"""The flow-control bench's per-arm late-pick keys (fc31): ``kvgate-reserve-feasible+pack`` /
``+alone`` configure that arm with ``flowControl.packCertainMisses`` / ``prefillAlonePick``, so the keys
run side by side in one run. Fails on 691110b3 (the ``+`` names were no arm: no key set)."""

import pytest

from kvgate.bench.flowcontrol_bench import arm_config


def _fc(arm: str) -> dict:
    return arm_config(arm, 30.0, headroom=0.75, headroom_on="pending")["flowControl"]


def test_plus_pack_and_plus_alone_set_their_key_on_that_arm_only():
    shipped, pack, alone = (_fc(a) for a in ("kvgate-reserve-feasible", "kvgate-reserve-feasible+pack",
                                             "kvgate-reserve-feasible+alone"))  # fmt: skip
    assert "packCertainMisses" not in shipped and "prefillAlonePick" not in shipped
    assert pack["packCertainMisses"] is True and "prefillAlonePick" not in pack
    assert alone["prefillAlonePick"] is True and "packCertainMisses" not in alone
    # the rest of the arm is the shipped one's
    assert {k: v for k, v in pack.items() if k != "packCertainMisses"} == shipped
    assert {k: v for k, v in alone.items() if k != "prefillAlonePick"} == shipped
    assert pack["orderingPolicy"] == "slo-feasible" and pack["fairShareHeadroom"] == 0.75


def test_both_modifiers_set_both_keys():
    both = _fc("kvgate-reserve+pack+alone")
    assert both["packCertainMisses"] is True and both["prefillAlonePick"] is True


@pytest.mark.parametrize("arm", ["kvgate-reserve-feasible+fast", "kvgate+pack", "reference+alone"])
def test_an_unknown_modifier_or_an_arm_without_the_headroom_is_refused(arm):
    with pytest.raises(ValueError, match=r"\+pack/\+alone only on a kvgate-reserve arm"):
        arm_config(arm, 30.0)


def test_the_live_bench_gives_kvgate_serve_the_arms_key():
    from kvgate.bench.flowcontrol_live import gateway_config

    doc = gateway_config("kvgate-reserve-feasible+alone", ["http://127.0.0.1:1"], 120.0, 16, headroom=0.75,
                         headroom_on="pending", running_reserve=True)  # fmt: skip
    fc = doc["pools"][0]["endpointPickerConfig"]["flowControl"]
    assert fc["prefillAlonePick"] is True and fc["orderingPolicy"] == "slo-feasible"
    assert fc["fairShareRunningReserve"] is True and "packCertainMisses" not in fc
