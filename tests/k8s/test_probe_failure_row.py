"""Review s18-k8s L4 (6fb5f5c, k8s17's 5xx retry alike): "a second failure in a row relists" - but a probe
answered 4xx (429 from API Priority and Fairness) between two failures does not break the row: ``failed``
is reset only by a proof or an answered 2xx probe (reflector.py ``_probe_silence``), so a connection error at
60 s, a 429 at 61 s and another connection error at 71 s (or minutes of 429s later) end the watch and relist
as if the two failures had come 1 s apart. The 429 shows the server answering in between.

Now a 4xx answer clears the failure before it (the server answered): only two failures with no answer
between them relist. The API-server double over real HTTP on loopback; time is injected.
"""

from __future__ import annotations

from aiohttp import web

from fake_time import FakeTime
from k8s.probe_kit import advance_to, probed_reflector, status_response
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble


class _Scripted(ApiServerDouble):
    """Answers the probes (``limit=1``, not a watch) by ``mode``: "refuse" (the connection closed before
    an answer), "throttle" (429, Retry-After 1), else as the double does."""

    mode = ""
    probes: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("limit") == "1" and "watch" not in request.query and self.mode:
            self.probes.append(self.mode)
            if self.mode == "refuse":
                assert request.transport is not None
                request.transport.abort()
                return web.Response()
            return status_response(429, "TooManyRequests", "Too many requests, please try again later.",
                                   headers={"Retry-After": "1"})  # fmt: skip
        return await super()._handle(request)


async def test_a_429_between_two_probe_connection_errors_breaks_the_row() -> None:
    double = _Scripted(bookmark_interval=0.2)
    double.probes = []
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        double.mode = "refuse"
        await advance_to(ft, 60.0)
        await until(lambda: r.probes_retried == 1 or r.lists > 1)
        double.mode = "throttle"
        await advance_to(ft, 61.0)
        await until(lambda: r.probes_unproven == 1 or r.lists > 1)
        assert r.lists == 1
        double.mode = "refuse"
        await advance_to(ft, 71.0)
        await until(lambda: len(double.probes) >= 3 or r.lists > 1)
        await until(lambda: r.stuck == 1 or r.probes_retried == 2)
        assert r.stuck == 0 and r.lists == 1, (
            f"probes {double.probes}: relisted on the connection error after a 429 ({r.error})"
        )
