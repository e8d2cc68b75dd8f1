"""Review s16-k8s F5: every 4xx probe answer is "answered, proves nothing" and ignored, with no bound:
kube-apiserver's API Priority and Fairness answers 429 at once when a priority level's queues are full,
which is what a server with stuck storage does once its seats are held by hung requests. Then every
probe gets 429, is ignored (DEBUG only, no Retry-After honoured, no count), and the stuck server is again
found only at the watch's client deadline (5-10 min + 15 s); meanwhile the copy counts as in sync.

Double: the probe (``limit=1``, no selector) is answered 429 TooManyRequests with ``Retry-After: 1``
(stalled too in the first test: watch open and silent, lists hang). Fixed by fixk8s16: no credit, Retry-After
honoured; since fixb16 (review s16-fixes-b KS1) 429s never relist (the third in a row did): the copy's age
grows from the last proof instead, so staleness shows.

Run:
  PYTHONPATH=/work/main/src:/work/main/tests /work/main/.venv/bin/python -m pytest -q \
      /work/team/reviews/s16-k8s-tests/test_s16k8s_probe_429_forever.py
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from fake_time import FakeTime
from k8s.probe_kit import advance, advance_probes, probed_reflector, status_response
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble

pytestmark = pytest.mark.asyncio


class _Throttled(ApiServerDouble):
    throttled = 0
    throttle = False
    retry_after = "1"
    delay_s = 0.0  # the 429 sent this late (what a loaded machine does)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.throttle and dict(request.query) == {"limit": "1"}:
            await asyncio.sleep(self.delay_s)
            self.throttled += 1
            return status_response(429, "TooManyRequests", "Too many requests, please try again later.",
                                   headers={"Retry-After": self.retry_after})  # fmt: skip
        return await super()._handle(request)


async def test_a_stuck_server_whose_probes_get_429_shows_in_the_copys_age() -> None:
    """A stuck server whose probes get 429: no relist (it would hang too), but no credit either: the
    copy's age grows from the last proof, so staleness shows (``--kube-stale-after``)."""
    double = _Throttled(bookmark_interval=0.2)
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        double.stall(lists=True)
        double.throttle = True
        await advance(ft, 5 * 60.0 + 10.0)
        await asyncio.sleep(0.3)
        age = r.age()
        assert double.throttled >= 3 and age is not None and age >= 5 * 60.0, (
            f"{double.throttled} probes answered 429 and credited: age={age} (a stuck server counts "
            "as in sync until the watch's client deadline)"
        )


@pytest.mark.parametrize("delay_s", [0.0, 0.12])
async def test_three_429s_in_a_row_do_not_relist_a_healthy_watch(delay_s: float) -> None:
    """Review s16-fixes-b KS1: API Priority and Fairness answers 429 on an overloaded server whose storage
    is fine too. Three 429s in a row ended a quiet, healthy watch and relisted (a full LIST from every quiet
    reflector every ~80 s of an overload). Now the watch stays open, the copy is not credited (its age
    grows) and an answered probe credits it again. Fails before fixb16: relisted at 80 s. The 429s 120 ms
    late too (review rev-c35 F1: one ``advance`` through six probes let a probe's 10 s timer pass before
    its late answer came back)."""
    double = _Throttled(bookmark_interval=0.2)
    double.delay_s = delay_s
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        lists, watches = r.lists, r.watches
        assert r.age() == 0.0
        double.throttle = True
        # six probes, 429 each (Retry-After 1: each next one 10 s after the last send), each answered
        # (counted and seen by the reflector) before the clock may pass its timeout
        at = [60.0 + 10.0 * i for i in range(6)]
        await advance_probes(ft, at, lambda n: double.throttled == n and r.probes_unproven == n)
        await asyncio.sleep(0.3)
        assert r.lists == lists and r.watches == watches and r.stuck == 0, (
            f"{double.throttled} 429s relisted a healthy watch: lists {lists} -> {r.lists}"
        )
        age = r.age()
        assert age is not None and age >= 110.0  # not credited meanwhile: staleness shows
        double.throttle = False
        await advance(ft, 10.0)  # the next probe is answered: credited again
        await until(lambda: r.probes == 1)
        assert r.age() == 0.0


async def test_the_next_probe_waits_the_servers_retry_after() -> None:
    """429 with ``Retry-After: 30``: the next probe is sent 30 s later, not sooner (and not a whole period
    later). Fails before: the next probe a period (60 s) later."""
    double = _Throttled(bookmark_interval=0.2)
    double.retry_after = "30"
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        double.throttle = True
        await advance(ft, 60.0)
        await until(lambda: double.throttled == 1)
        await advance(ft, 29.0)
        await asyncio.sleep(0.3)
        assert double.throttled == 1, "a probe before the Retry-After"
        await advance(ft, 1.0)
        await until(lambda: double.throttled == 2)
        assert r.probes == 0 and r.last_sync == 0.0  # never a proof
