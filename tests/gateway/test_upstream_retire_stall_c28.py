"""rev-c28 F1: qa28's busy-connection test survives a 20 ms stall while its connection opens.

The stall (the process descheduled under load) lets the test's poll fire between the server's accept and
the client's ``pool._open.add``; waiting on the server's count then retired nothing and the test waited
30 s for a close that never came. Fails on 00b6e63e (both params, ~30 s each).
"""

from __future__ import annotations

import asyncio
import time
from asyncio import selector_events

import pytest

from . import test_upstream_retire_qa28 as qa


@pytest.mark.parametrize("where", ["_sock_connect_cb", "_accept_connection"])
def test_qa28_busy_test_survives_one_stall_while_connecting(monkeypatch, where: str) -> None:
    orig = getattr(selector_events.BaseSelectorEventLoop, where)
    stalled: list[int] = []

    def stall_once(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        if not stalled:
            stalled.append(1)
            time.sleep(0.02)  # the process descheduled for 20 ms
        return out

    monkeypatch.setattr(selector_events.BaseSelectorEventLoop, where, stall_once)
    asyncio.run(qa.test_a_busy_connection_finishes_its_exchange_then_closes())
