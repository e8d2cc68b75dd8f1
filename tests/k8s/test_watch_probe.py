"""The liveness probe of a silent watch (session 16): a stuck-but-connected API server (watches answer 200 and
then send nothing, requests hang) was found only at the watch's client deadline, its timeoutSeconds + 15 s (up
to ~10 min 15 s), the copy counting as in sync (age 0) all along. Now an open watch that reads nothing for
``probe_after_s`` asks one consistent ``LIST ?limit=1`` (the watch's selectors, no resourceVersion);
unanswered within ``probe_timeout_s`` it ends the watch and relists, so the copy ages from its last proof and
the stale WARNING comes. Answered, the watch goes on (no relist: one one-object LIST per quiet minute, none
while events come). Against the API-server double over real HTTP on loopback, the probe's period and deadline
on injected time (``tests/fake_time.py``); the watches' own timeoutSeconds are the production
5-10 min, never reached here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from fake_time import FakeTime
from k8s.reflector_kit import create_pod, until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.resources import POD
from kvgate.k8s.staleness import StalenessMonitor
from kvgate.k8s.stalepolicy import StalenessPolicy


def _probes(double: ApiServerDouble) -> list[dict[str, list[str]]]:
    """The query of every non-watch GET of the pods collection after the first (the initial list)."""
    out = []
    for line in double.requests:
        verb, target = line.split(" ", 1)
        u = urlsplit(target)
        q = parse_qs(u.query)
        if verb == "GET" and u.path == "/api/v1/namespaces/default/pods" and q.get("watch") != ["true"]:
            out.append(q)
    return out[1:]


@asynccontextmanager
async def _reflector(double: ApiServerDouble, ft: FakeTime, **kw: Any) -> AsyncIterator[Reflector]:
    create_pod(double)
    client = await KubeClient.connect(server=double.url)
    r = Reflector(client, POD, namespace="default", label_selector="app=x", clock=ft.clock, sleep=ft.sleep,
                  seed=1, probe_after_s=60.0, probe_timeout_s=10.0, **kw)  # fmt: skip
    r.start()
    try:
        await r.wait_synced()
        await until(lambda: r.watches >= 1 and ft.next_wake() is not None)  # open, its probe waiting
        yield r
    finally:
        await r.stop()
        await client.close()


async def _advance_to(ft: FakeTime, when: float) -> None:
    """Move the injected time to ``when`` (no sleeper skipped: each pending wake reached in turn)."""
    while ft.now < when:
        wake = ft.next_wake()
        step = when - ft.now if wake is None or wake <= ft.now else min(when, wake) - ft.now
        ft.advance(step)
        await asyncio.sleep(0.02)  # (let what woke run)


async def test_a_stuck_api_server_is_found_by_the_probe_not_at_the_watch_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API server stalls (watch open and silent, lists hang). At 60 s of silence the probe is sent;
    unanswered 10 s later the watch ends and the relist (hung) follows: the copy's age is the time since the
    last proof (the list at 0), and the stale WARNING comes at 120 s, not ~10 min later. Once the server
    answers, the relist completes: in sync again. Fails before: no probe, the watch stays open (age 0) until
    its client deadline (timeoutSeconds 300-600 s + 15 s)."""
    async with ApiServerDouble(bookmark_interval=0.2) as double:
        ft = FakeTime()
        async with _reflector(double, ft) as r:
            monitor = StalenessMonitor([r], [r], StalenessPolicy(stale_after_s=120.0))
            lists = r.lists
            double.stall(lists=True)
            ft.advance(60.0)
            await until(lambda: len(_probes(double)) == 1)  # the probe sent, hanging
            assert r.age() == 0.0 and r.stuck == 0
            ft.advance(10.0)
            await until(lambda: r.stuck == 1)
            assert r.overruns == 0 and r.lists == lists  # (the relist hangs)
            assert "did not answer a liveness probe" in (r.error or ""), r.error
            assert r.age() == 70.0, "the silent watch on a stuck API server still counts as in sync"
            ft.advance(51.0)
            with caplog.at_level(logging.WARNING, logger="kvgate.k8s.staleness"):
                monitor.check()
            assert r in monitor.stale()
            assert any("not in sync with the API server for 121 s" in m for m in caplog.messages), (
                caplog.messages
            )
            double.unstall()  # the hung relist is answered
            await until(lambda: r.lists > lists and r.watches >= 2)
            monitor.check()
            assert r.age() == 0.0 and r.error is None and not monitor.stale()


async def test_a_quiet_watch_on_a_healthy_server_is_probed_with_limit_1_and_never_relists() -> None:
    """A quiet type (the double as kube-apiserver's cacher: no bookmark, nothing changes): every 60 s of
    silence one probe, on the wire ``limit=1`` and the watch's own selector, nothing else (no
    resourceVersion: a consistent read; the selector: RBAC ``resourceNames`` needs it, review s16-k8s F1),
    answered, so the watch goes on: no relist, no error; an answered probe is
    a proof (``last_sync`` its send time), the age 0 while the watch is open."""
    async with ApiServerDouble(bookmark_interval=0.2) as double:
        ft = FakeTime()
        async with _reflector(double, ft) as r:
            for n in range(1, 4):
                await _advance_to(ft, 60.0 * n)
                await until(lambda n=n: r.probes == n)  # type: ignore[misc]
                assert r.last_sync == 60.0 * n and r.age() == 0.0
            assert r.lists == 1 and r.watches == 1 and r.stuck == 0 and r.error is None
            assert r.bookmarks == 0 and r.events == 0
        assert _probes(double) == [{"labelSelector": ["app=x"], "limit": ["1"]}] * 3


async def test_a_watch_that_reads_events_is_not_probed() -> None:
    """An event every 50 s: no probe at all (the probe costs nothing on a busy watch); the silence is timed
    from the last event (review s16-k8s F3), so 59 s after the last one still none."""
    async with ApiServerDouble(bookmark_interval=0.2) as double:
        ft = FakeTime()
        async with _reflector(double, ft) as r:
            for n in range(1, 4):
                double.set_pod_status("a", ip=f"10.0.0.{n}", ready=True)
                await until(lambda n=n: r.events == n)  # type: ignore[misc]
                await _advance_to(ft, 50.0 * n)
            await _advance_to(ft, 100.0 + 59.0)
            assert r.probes == 0 and r.stuck == 0 and r.lists == 1
        assert _probes(double) == []


class _StorageDown(ApiServerDouble):
    """A double whose next ``fail_probes`` ``limit=1`` lists (the probe's: no watch) are answered
    ``code`` with kube-apiserver's Status for an etcd timeout (and ``retry_after``, if set), over the
    wire."""

    fail_probes = 0
    code = 504
    retry_after: str | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        probe = request.query.get("limit") == "1" and "watch" not in request.query
        if self.fail_probes and request.method == "GET" and probe:
            self.fail_probes -= 1
            self.requests.append(f"{request.method} {request.path_qs}")
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": self.code,
                      "reason": "Timeout", "message": "etcdserver: request timed out"}  # fmt: skip
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.json_response(status, status=self.code, headers=headers)
        return await super()._handle(request)


@asynccontextmanager
async def _storage_down(
    code: int = 504, retry_after: str | None = None
) -> AsyncIterator[tuple[_StorageDown, FakeTime, Reflector]]:
    """A ``_StorageDown`` double answering ``code`` (and ``retry_after``) to the probes it is told to fail
    (``fail_probes``, none yet), and its reflector on the test's time, synced, its watch open."""
    double = _StorageDown(bookmark_interval=0.2)
    double.code, double.retry_after = code, retry_after
    async with double:
        ft = FakeTime()
        async with _reflector(double, ft) as r:
            yield double, ft, r


async def test_two_probes_answered_with_a_server_error_in_a_row_relist() -> None:
    """The server answers, but from storage it cannot reach (a 504, kube-apiserver's "etcdserver: request
    timed out"), twice in a row: asked again 1 s after the first (``PROBE_RETRY_S``), the second 5xx ends
    the watch and relists, as no answer does; a relist that completes is in sync."""
    async with _storage_down() as (double, ft, r):
        double.fail_probes = 2
        await _advance_to(ft, 60.0)
        await until(lambda: r.probes_retried == 1)
        assert r.stuck == 0 and r.lists == 1, "one 5xx relisted"
        await _advance_to(ft, 61.0)
        await until(lambda: r.stuck == 1 and r.lists == 2 and r.watches == 2)
        assert r.error is None and r.age() == 0.0 and double.fail_probes == 0
    assert len(_probes(double)) == 2 + 1  # (the two probes, then the relist)


async def test_a_server_error_then_no_answer_relists_at_the_retry_s_timeout() -> None:
    """A 503, then the server stalls: the retry (at 61 s) unanswered for 10 s ends the watch (71 s), the
    relist hangs and the copy ages from its last proof (the list at 0); the error names both."""
    async with _storage_down(503) as (double, ft, r):
        double.fail_probes = 1
        await _advance_to(ft, 60.0)
        await until(lambda: r.probes_retried == 1)
        double.stall(lists=True)
        await _advance_to(ft, 61.0)
        await until(lambda: len(_probes(double)) == 2)  # the retry sent, hanging
        await _advance_to(ft, 70.9)
        assert r.stuck == 0
        await _advance_to(ft, 71.0)
        await until(lambda: r.stuck == 1)
        assert "no answer within 10 s" in (r.error or "") and "503" in (r.error or ""), r.error
        assert r.age() == 71.0 and r.lists == 1
        double.unstall()
        await until(lambda: r.lists == 2 and r.watches >= 2)


@pytest.mark.parametrize(
    ("code", "retry_after", "again_at"),
    [(503, None, 61.0), (504, None, 61.0), (503, "5", 65.0), (503, "3600", 70.0)],
)
async def test_one_probe_answered_with_a_server_error_is_asked_again_before_a_relist(
    code: int, retry_after: str | None, again_at: float
) -> None:
    """k8s17 (session 16's closing note: "a single 5xx probe forces a full relist"): an API server
    restarting behind a load balancer answers 503 once; the probe is asked again 1 s later (or after the
    answer's Retry-After, at most the probe's 10 s timeout), answered: no relist, the watch goes on, the
    copy in sync as of the second probe, the next probe 60 s after it. Fails before: the first 5xx relisted
    the whole collection."""
    async with _storage_down(code, retry_after) as (double, ft, r):
        double.fail_probes = 1
        await _advance_to(ft, 60.0)
        await until(lambda: r.probes_retried == 1 or r.lists > 1)
        await _advance_to(ft, again_at - 0.5)
        assert len(_probes(double)) == 1 and r.probes == 0
        await _advance_to(ft, again_at)
        await until(lambda: r.probes == 1)
        assert r.lists == 1 and r.watches == 1 and r.stuck == 0 and r.error is None
        assert r.last_sync == again_at and r.age() == 0.0
        await _advance_to(ft, again_at + 60.0)
        await until(lambda: r.probes == 2)
        assert r.lists == 1 and r.probes_retried == 1
    assert len(_probes(double)) == 3


async def test_a_later_single_server_error_after_a_proof_is_asked_again() -> None:
    """A 503 at 60 s, its retry answered at 61 s (a proof); minutes later (121 s) another, unrelated 503:
    asked again too (at 122 s), not a relist: the first is forgotten once a probe answered. Catches review
    s17-k8s mutation R4 (the 5xx kept after a proof: the second relisted)."""
    async with _storage_down(503) as (double, ft, r):
        double.fail_probes = 1
        await _advance_to(ft, 61.0)
        await until(lambda: r.probes == 1)
        double.fail_probes = 1
        await _advance_to(ft, 121.0)
        await until(lambda: r.probes_retried == 2 or r.lists > 1)
        assert r.lists == 1 and r.stuck == 0, "a 5xx a minute after an answered probe relisted"
        await _advance_to(ft, 122.0)
        await until(lambda: r.probes == 2)
        assert r.lists == 1 and r.watches == 1 and r.stuck == 0 and r.last_sync == 122.0


async def test_a_later_single_server_error_after_an_event_is_asked_again() -> None:
    """A 503 at 60 s; before its retry an event comes (a pod of the selection created at 60 s): the server
    is alive, the 5xx forgotten, the next probe 60 s after the event (120 s). Answered 503 too: asked
    again (121 s), not a relist. Catches review s17-k8s mutation R5 (the 5xx kept after an event)."""
    async with _storage_down(503) as (double, ft, r):
        double.fail_probes = 1
        await _advance_to(ft, 60.0)
        await until(lambda: r.probes_retried == 1)
        events = r.events
        double.create({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "b", "namespace": "default", "labels": {"app": "x"}},
                       "spec": {"containers": [{"name": "c", "image": "x"}]}})  # fmt: skip
        await until(lambda: r.events > events)
        await _advance_to(ft, 61.0)
        await asyncio.sleep(0.1)
        assert len(_probes(double)) == 1, "the retry was sent after an event proved the server alive"
        double.fail_probes = 1
        await _advance_to(ft, 120.0)
        await until(lambda: r.probes_retried == 2 or r.lists > 1)
        assert r.lists == 1 and r.stuck == 0, "a 5xx a minute after an event relisted"
        await _advance_to(ft, 121.0)
        await until(lambda: r.probes == 1)
        assert r.lists == 1 and r.watches == 1 and r.stuck == 0 and r.last_sync == 121.0
