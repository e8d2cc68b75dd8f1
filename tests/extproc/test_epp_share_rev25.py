"""rev-gw25 F2/F3: ``kvgate epp``'s share is per fairness id (``flow_key``), with no flag.

- F2: every request without a fairness id is one client, "default-flow" (``flow_key(None, None)``): in an EPP
  whose clients send no id (Envoy's many users), the share caps *all* of them at a quarter of
  ``--max-buffered-bytes``: an honest user's big body gets 429 while three quarters of the budget are free.
  Passes on e7cc9e9d (held, answered), fails on gw25 (429).
- F3: a fairness id is the client's to choose (offload.py: "an EPP's fairness ids are the clients' to
  choose"): a tenant that sends each body under a fresh id has a first body per id, and fills the budget as
  before; another tenant's body then gets the budget's 503, the very thing the share was for. Fails on
  e7cc9e9d and on gw25.
Real gRPC on loopback (the ``Exchange`` plays Envoy); parses held (``gateway.held_parse``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from extproc._parse_lane import big_body as _big
from extproc.test_parse_off_loop_epp_gw24 import ADDRS, _send
from gateway.conftest import until
from gateway.held_parse import hold_parse, tagged
from kvgate.extproc import session as session_module
from kvgate.httpfront import offload


async def test_users_without_a_fairness_id_are_not_one_client(
    start_epp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 1 << 20  # (four ~240 KB bodies fit; a quarter: 256 KiB)
    epp = await start_epp(ADDRS, max_buffered_bytes=budget)
    hp = hold_parse(monkeypatch, session_module, tagged("slow"))
    first = asyncio.create_task(_send(epp, _big("slow")))  # (user 1, no fairness id: Envoy sends none)
    try:
        await until(hp.entered.is_set, what="the first parse started")
        second = asyncio.create_task(_send(epp, _big()))  # (user 2, no id either; the budget has room)
        lane = offload._lanes[asyncio.get_running_loop()]
        await until(lambda: second.done() or len(lane) == 1, what="user 2's body queued or answered")
        early = second.result().status if second.done() else None
        assert early is None, early  # gw25: 429 (one "default-flow" client)
        assert epp.server.ctx.budget.used <= budget // 2
    finally:
        hp.release.set()
        await asyncio.gather(first, return_exceptions=True)
    assert (await second).immediate is None


async def test_a_tenant_rotating_fairness_ids_cannot_fill_the_budget(
    start_epp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Adapted from the review's: there, the other tenant's big body was to be queued behind the flood,
    which needs 5 bodies of 210 KB in a 1 MiB budget; a fresh id is any other tenant to the EPP, so the
    bound that holds is on all waiting bodies together: past half the budget, at most three quarters.)"""
    budget = 1 << 20
    epp = await start_epp(ADDRS, max_buffered_bytes=budget)
    hp = hold_parse(monkeypatch, session_module, tagged("slow"))
    flood = [asyncio.create_task(_send(epp, _big("slow"), "hostile-0"))]
    try:
        await until(hp.entered.is_set, what="the first slow parse started")
        flood += [asyncio.create_task(_send(epp, _big("slow"), f"hostile-{i}")) for i in range(1, 5)]
        lane = offload._lanes[asyncio.get_running_loop()]
        await until(lambda: sum(t.done() for t in flood) + len(lane) == 4, what="the flood settled")
        # fails on gw25 (and before): the fresh ids' bodies fill the budget (4 x 210 KB), the fifth gets 503
        used = epp.server.ctx.budget.used
        assert used <= budget - budget // 4, used
        refused = [t.result().status for t in flood if t.done()]
        assert refused and set(refused) == {429}, refused  # (a share's 429 with Retry-After, not a 503)
        small = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 4})  # (parsed on the loop)
        out = await _send(epp, small, "other")
        assert out.immediate is None and out.destination in ADDRS
    finally:
        hp.release.set()
        await asyncio.gather(*flood, return_exceptions=True)


def test_the_epp_refusal_of_the_share_key_names_its_fixed_quarter() -> None:
    """rev-gw25 L2: ``limits.maxWaitingBytesPerClient`` was refused as "Envoy in front proxies the request",
    yet the EPP bounds its waiting bodies itself, with a fixed quarter."""
    from kvgate.extproc.config import not_applied

    ((key, why),) = not_applied({"limits": {"maxWaitingBytesPerClient": 5}})
    assert key == "limits.maxWaitingBytesPerClient"
    assert "a quarter of --max-buffered-bytes" in why and "Envoy" not in why, why
