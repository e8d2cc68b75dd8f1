"""`kvgate bench soak` end to end, briefly (slow: left out of the default suite; `make soak` runs 30 min)."""

from __future__ import annotations

import pytest

from kvgate.bench.soak import Soak, parser


@pytest.mark.slow
async def test_short_soak_loses_nothing_and_frees_every_stalled_slot():
    args = parser().parse_args(
        ["--minutes", "0.3", "--restart-every", "8", "--clients", "4", "--bad", "1", "--final-wait", "60"]
    )
    report = await Soak(args).run()
    assert report["lost_not_started"] == 0
    assert report["slots_held_past_deadline"] == 0
    assert report["replica_restarts"] >= 1
