"""An API server back after an outage: the re-opened watch clears the outage's error (review s15-fixes-b 1;
before, a quiet type kept it until an event, a bookmark or the watch's 5-10 min end, and
``ImportController.problem`` kept ``kvgate hub-controller``'s /readyz at 503 meanwhile)."""

from __future__ import annotations

import asyncio

from k8s.reflector_kit import pod_reflector, until
from kvgate.k8s.apiserver import ApiServerDouble


async def test_the_connection_error_clears_soon_after_the_api_server_is_back() -> None:
    # no bookmark in the test's time: a quiet type (kube-apiserver's cacher), whichever double
    async with ApiServerDouble(bookmark_interval=100.0) as double:
        now = [1000.0]
        async with pod_reflector(double, now) as r:
            await until(lambda: r.watches >= 1 and r.error is None)
            await double.go_away()
            await until(lambda: r.error is not None)
            await double.come_back()
            await until(lambda: r.watches >= 2)  # the watch is open again (age 0 now)
            await asyncio.sleep(3.0)  # the error used to stay until a bookmark or the watch's end
            assert r.error is None, (
                f"the API server has been back for 3 s with a watch open (age {r.age()}), "
                f"but the reflector still reports: {r.error}"
            )
