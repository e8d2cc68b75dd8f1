"""Review s16-k8s F5: every 4xx probe answer is "answered, proves nothing" and ignored, with no bound:
kube-apiserver's API Priority and Fairness answers 429 at once when a priority level's queues are full,
which is what a server with stuck storage does once its seats are held by hung requests. Then every
probe gets 429, is ignored (DEBUG only, no Retry-After honoured, no count), and the stuck server is again
found only at the watch's client deadline (5-10 min + 15 s); meanwhile the copy counts as in sync.

Double: stalled (watch open and silent, lists hang) while the probe (``limit=1``, no selector) is answered
429 TooManyRequests with ``Retry-After: 1``. Fails on main: after five probe periods (5 min 10 s) stuck is 0,
error None, age 0. (A fix: count consecutive unproven probes and treat, e.g., the third as "no answer";
or retry after Retry-After within the probe's own deadline.)

Run:
  PYTHONPATH=/work/main/src:/work/main/tests /work/main/.venv/bin/python -m pytest -q \
      /work/team/reviews/s16-k8s-tests/test_s16k8s_probe_429_forever.py
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from fake_time import FakeTime
from k8s.reflector_kit import create_pod, until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.resources import POD

pytestmark = pytest.mark.asyncio


class _Throttled(ApiServerDouble):
    throttled = 0
    throttle = False
    retry_after = "1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.throttle and dict(request.query) == {"limit": "1"}:
            self.throttled += 1
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": 429,
                "reason": "TooManyRequests",
                "message": "Too many requests, please try again later.",
            }
            return web.json_response(status, status=429, headers={"Retry-After": self.retry_after})
        return await super()._handle(request)


async def _advance(ft: FakeTime, seconds: float) -> None:
    end = ft.now + seconds
    while ft.now < end:
        wake = ft.next_wake()
        step = end - ft.now if wake is None or wake <= ft.now else min(end, wake) - ft.now
        ft.advance(step)
        await asyncio.sleep(0.05)


async def test_a_stuck_server_whose_probes_get_429_is_found_before_the_watch_deadline() -> None:
    double = _Throttled(bookmark_interval=0.2)
    async with double:
        create_pod(double)
        ft = FakeTime()
        client = await KubeClient.connect(server=double.url)
        r = Reflector(client, POD, namespace="default", clock=ft.clock, sleep=ft.sleep, seed=1,
                      probe_after_s=60.0, probe_timeout_s=10.0)  # fmt: skip
        r.start()
        try:
            await r.wait_synced()
            await until(lambda: r.watches >= 1 and ft.next_wake() is not None)
            double.stall(lists=True)
            double.throttle = True
            await _advance(ft, 5 * 60.0 + 10.0)
            await asyncio.sleep(0.3)
            assert r.stuck >= 1 or r.error is not None, (
                f"{double.throttled} probes answered 429 and ignored: stuck={r.stuck} error={r.error!r} "
                f"age={r.age()} (a stuck server counts as in sync until the watch's client deadline)"
            )
        finally:
            double.unstall()
            await r.stop()
            await client.close()


async def test_the_next_probe_waits_the_servers_retry_after() -> None:
    """429 with ``Retry-After: 30``: the next probe is sent 30 s later, not sooner (and not a whole period
    later). Fails before: the next probe a period (60 s) later."""
    double = _Throttled(bookmark_interval=0.2)
    double.retry_after = "30"
    async with double:
        create_pod(double)
        ft = FakeTime()
        client = await KubeClient.connect(server=double.url)
        r = Reflector(client, POD, namespace="default", clock=ft.clock, sleep=ft.sleep, seed=1,
                      probe_after_s=60.0, probe_timeout_s=10.0)  # fmt: skip
        r.start()
        try:
            await r.wait_synced()
            await until(lambda: r.watches >= 1 and ft.next_wake() is not None)
            double.throttle = True
            await _advance(ft, 60.0)
            await until(lambda: double.throttled == 1)
            await _advance(ft, 29.0)
            await asyncio.sleep(0.3)
            assert double.throttled == 1, "a probe before the Retry-After"
            await _advance(ft, 1.0)
            await until(lambda: double.throttled == 2)
            assert r.probes == 0 and r.last_sync == 0.0  # never a proof
        finally:
            await r.stop()
            await client.close()
