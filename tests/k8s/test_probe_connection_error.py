"""closing-s17 "Noticed and left undone" (Kubernetes): a liveness probe whose connection failed (refused,
reset, closed before its answer) relisted at once, while a probe answered 5xx is asked again once
(``PROBE_RETRY_S``, k8s17). A load balancer in front of an API server that restarts refuses or resets new
connections for a moment as readily as it answers 502/503, while the open watch's connection stays up:
one such probe relisted the whole collection. Now a connection error is asked again once too, within the
same bound (1 s later; the retry waits ``probe_timeout_s`` for its answer), and a second failure in a row
relists as before.

The API-server double over real HTTP on loopback closes the probe's connection before it answers (the
client reads ``ServerDisconnectedError``/``ClientOSError``) while ``refuse`` is set; time is injected.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from fake_time import FakeTime
from k8s.probe_kit import advance_to, probed_reflector
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble


class _Refusing(ApiServerDouble):
    """Closes the connection of every probe (``limit=1``, not a watch) while ``refuse`` is set."""

    refuse = False
    refused = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.refuse and request.query.get("limit") == "1" and "watch" not in request.query:
            self.refused += 1
            assert request.transport is not None
            request.transport.abort()  # (no answer: the client's read of it fails)
            return web.Response()
        return await super()._handle(request)


async def test_a_probe_whose_connection_failed_is_asked_again_before_a_relist(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The probe at 60 s loses its connection; asked again at 61 s and answered: no relist, the watch goes
    on, the copy in sync as of the retry. Fails before: relisted at 60 s (``stuck`` 1, two lists)."""
    caplog.set_level(logging.INFO, logger="kvgate.k8s.reflector")
    double = _Refusing(bookmark_interval=0.2)
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        double.refuse = True
        await advance_to(ft, 60.0)
        await until(lambda: double.refused >= 1 and (r.probes_retried == 1 or r.lists > 1))
        assert r.lists == 1 and r.stuck == 0, f"a probe's connection error relisted: {r.error}"
        double.refuse = False
        await advance_to(ft, 60.9)
        assert r.probes == 0
        await advance_to(ft, 61.0)
        await until(lambda: r.probes == 1)
        assert (r.lists, r.watches, r.stuck, r.probes_retried) == (1, 1, 0, 1)
        assert r.error is None and r.last_sync == 61.0 and r.age() == 0.0
        assert "the liveness probe failed (" in caplog.text


async def test_two_probe_connection_errors_in_a_row_relist() -> None:
    """Refused at 60 s and again at 61 s: the watch ends and relists at 61 s, the error naming both."""
    double = _Refusing(bookmark_interval=0.2)
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        double.refuse = True
        await advance_to(ft, 60.0)
        await until(lambda: r.probes_retried == 1 or r.lists > 1)
        assert r.lists == 1
        await advance_to(ft, 61.0)
        await until(lambda: r.stuck == 1)
        double.refuse = False
        assert "the probe before it" in (r.error or ""), r.error
        await until(lambda: r.lists == 2 and r.watches >= 2)
        await asyncio.sleep(0.05)
        assert r.probes_retried == 1
