"""``kvgate epp``'s parse lane names a client as flow control does (``flow_of``: the GIE fairness header
unless absent or "default-flow", else llm-d's; review s24-rev-gw24 F5). Two tenants send the GIE header as
"default-flow" and their own llm-d id: one flow each in flow control, so two clients on the lane; the other
tenant's body is parsed right after the slow parse in progress, before the first tenant's queued ones.
FAILS on main b10fb7c4: the lane took "default-flow" for both, one client, so the body waited for both
queued slow parses (their holds ran out). Real gRPC on loopback; no timing assert (``held_parse``)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.extproc import keys
from kvgate.extproc.testing import RequestOutcome
from kvgate.openai.protocol import LLMD_FAIRNESS_ID

from ._parse_lane import HEADERS, another_tenant_cuts_in, send

ADDRS = ["127.0.0.1:28011", "127.0.0.1:28012"]


async def test_llmd_tenants_under_an_explicit_default_flow_take_turns(
    start_epp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    epp = await start_epp(ADDRS)

    async def send_as(body: bytes, tenant: str) -> RequestOutcome:
        return await send(
            epp, body, {**HEADERS, keys.FAIRNESS_ID: keys.DEFAULT_FAIRNESS_ID, LLMD_FAIRNESS_ID: tenant}
        )

    out, held_out = await another_tenant_cuts_in(epp, monkeypatch, send_as)
    assert out.immediate is None and out.destination in ADDRS
    # FAILS on main b10fb7c4: [False, True, True] (one client: the two slow ones went first)
    assert held_out == [False], held_out
