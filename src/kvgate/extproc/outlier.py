"""``kvgate epp``'s passive health: each model server's answer, as the ``:status`` of the response
headers Envoy passes the EPP, charged to the endpoint that answered by the rule ``kvgate serve`` ejects by
(``kvgate.datalayer.ejection``: ``ejectAfterFailures`` consecutive failures eject it, never the pool's last
endpoint up nor more than ``maxEjectionPercent``; probed back in at ``probePath`` with back-off).

Review s30-qa30 Q2: a pod that answered every request 500 at once (its ``/metrics`` fine) looked idle to a
load-aware picker and drew about half the requests, indefinitely; the EPP counted the 500s and kept no
health from them. A 5xx is a failure (the EPP sees one answer per request: no retry tells a "query of
death" apart, as Envoy's ``consecutive_5xx`` does not); a 429 (busy, not broken) neither; any other
answer a success."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import aiohttp

from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.endpoint import Endpoint


class Outlier:
    def __init__(self, tracker: HealthTracker, endpoints: Callable[[], Mapping[str, Endpoint]]) -> None:
        self.tracker = tracker
        self.endpoints = endpoints

    def answered(self, ep: Endpoint, status: int) -> None:
        """``ep`` answered a request with ``status`` (0: no status read: nothing said)."""
        if status >= 500:
            self.tracker.failure(ep, self.endpoints().values())
        elif status and status != 429:
            self.tracker.success(ep)

    async def run(self) -> None:
        """The probe loop (``HealthTracker.run``), until cancelled."""
        async with aiohttp.ClientSession() as session:
            await self.tracker.run(session, lambda: self.endpoints().values())

    def start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.run())
