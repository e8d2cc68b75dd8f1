"""What counts as in sync (``Reflector.last_sync``): a completed list, a watch event or bookmark, a quiet
watch held for the silence limit on a server without bookmarks; not a watch that merely opens (review
s14-k8s M1: one that answers 200 and then fails, over and over, looked fresh forever)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from k8s.reflector_kit import create_pod, pod_reflector, serve, until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import HELD_OPEN_S, Backoff, Reflector
from kvgate.k8s.resources import POD
from kvgate.k8s.staleness import StalenessMonitor
from kvgate.k8s.stalepolicy import StalenessPolicy

POD_A = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "a", "namespace": "default", "resourceVersion": "10"}}  # fmt: skip


class FailingWatchServer:
    """A real HTTP server whose list works (until ``lists_fail``) and whose every watch opens (200) and then
    carries one ERROR event: a 500 Status (``code``), as kube-apiserver sends when a CRD conversion webhook
    or etcd fails mid-watch, or a 410 (history compacted). No object event is ever delivered."""

    def __init__(self) -> None:
        self.watches = 0
        self.lists = 0
        self.code = 500
        self.lists_fail = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") in ("true", "1"):
            self.watches += 1
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": self.code,
                      "reason": "InternalError" if self.code == 500 else "Expired",
                      "message": "Internal error occurred: conversion failed"}  # fmt: skip
            await resp.write(orjson.dumps({"type": "ERROR", "object": status}) + b"\n")
            await resp.write_eof()
            return resp
        self.lists += 1
        if self.lists_fail:
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                      "reason": "InternalError", "message": "etcdserver: request timed out"}  # fmt: skip
            return web.json_response(status, status=500)
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "10"},
            "items": [POD_A],
        }
        return web.json_response(body)


@pytest.fixture
async def failing() -> AsyncIterator[tuple[FailingWatchServer, str]]:
    srv = FailingWatchServer()
    runner, url = await serve(srv.handle)
    yield srv, url
    await runner.cleanup()


def _fast() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


async def test_a_watch_that_opens_then_errors_in_a_loop_does_not_look_fresh(
    failing: tuple[FailingWatchServer, str],
) -> None:
    """Review s14-k8s M1. Every watch opens and then fails with an in-stream ERROR (500); nothing but the
    first list was ever read. 500 s (injected clock) later the copy is 500 s old, stale, and the cause is
    kept. Failed before: the watch's 200 reset the age (and cleared the error) at every re-open, so the
    gauge, the stale WARNING and --kube-stale-not-ready-after all said "fresh" forever."""
    srv, url = failing
    now = [0.0]
    client = await KubeClient.connect(server=url)
    r = Reflector(client, POD, namespace="default", clock=lambda: now[0], seed=1, backoff=_fast())
    mon = StalenessMonitor([r], [r], StalenessPolicy(stale_after_s=120.0, not_ready_after_s=300.0))
    r.start()
    try:
        await r.wait_synced()
        await until(lambda: r.watches >= 1 and r.error is not None)  # the first watch failed
        now[0] = 500.0
        seen = srv.watches
        await until(lambda: srv.watches >= seen + 2)  # re-opened (and failed) at t=500
        await asyncio.sleep(0.05)
        assert r.events == r.watches  # one ERROR per watch: no object event, no bookmark, ever
        age = r.age()
        assert age is not None and age >= 500.0, f"age {age}: a watch that only ever errors looks fresh"
        assert r.error is not None and "conversion failed" in r.error  # the cause stays for the stale line
        mon.check()
        assert mon.stale() == [r]
        problem = mon.problem()
        assert problem is not None and "not in sync with the API server for 500 s" in problem, problem
        assert "conversion failed" in problem
    finally:
        await r.stop()
        await client.close()


async def test_an_open_that_then_fails_does_not_reset_the_back_off(
    failing: tuple[FailingWatchServer, str],
) -> None:
    """Review s14-k8s M1 (older, same cause): the back-off was reset by each open, so a watch failing
    in-stream was re-opened every ~0.1 s (9 requests/s measured) instead of backing off to 5 s."""
    srv, url = failing
    client = await KubeClient.connect(server=url)
    r = Reflector(client, POD, namespace="default", seed=1, backoff=Backoff(initial=0.01, maximum=5.0))
    r.start()
    try:
        await until(lambda: srv.watches >= 5)
        # Five failed opens in a row: 0.01, 0.02, 0.04, 0.08, 0.16 (it was 0.01 after each, reset).
        assert r.backoff._next >= 0.08, r.backoff._next
    finally:
        await r.stop()
        await client.close()


async def test_a_410_counts_only_once_its_relist_completes(failing: tuple[FailingWatchServer, str]) -> None:
    """Review s14-k8s M1 (milder form): after an outage the re-open at a compacted resourceVersion (200,
    then ERROR 410) made the copy fresh and the replica ready before the relist had brought it up to
    date. Now the age runs on until a list completes."""
    srv, url = failing
    now = [0.0]
    client = await KubeClient.connect(server=url)
    r = Reflector(client, POD, namespace="default", clock=lambda: now[0], seed=1, backoff=_fast())
    r.start()
    try:
        await r.wait_synced()
        srv.code, srv.lists_fail = 410, True  # every watch: 410; every relist: 500
        now[0] = 400.0
        await until(lambda: r.gone >= 1 and srv.lists >= 3)  # the 410, then relists that fail
        assert r.age() == 400.0 and r.error is not None and "etcdserver" in r.error
        srv.lists_fail = False  # the relist completes: in sync now
        lists = r.lists
        await until(lambda: r.lists > lists)
        assert r.age() == 0.0 and r.error is None
    finally:
        await r.stop()
        await client.close()


async def test_a_quiet_watch_on_a_server_without_bookmarks_stays_in_sync() -> None:
    """The other side: a watch that stays open and reads nothing, from a server that sends no bookmark
    (kube-apiserver's cacher sends none until the type's resourceVersion passes the watch's start), is in
    sync while open and at the server's end of it, with no relist (review s15-k8s F1: session 15 relisted
    after 90 s of silence). Scaled: timeoutSeconds 1-2 s."""
    async with ApiServerDouble(bookmark_interval=1000.0) as double:
        now = [0.0]
        async with pod_reflector(double, now, min_watch_timeout_s=1, watch_deadline_margin_s=5.0) as r:
            await r.wait_synced()
            await until(lambda: r._watching)
            now[0] = 500.0
            assert r.age() == 0.0  # open and well: in sync
            await until(lambda: r.watches >= 3)  # two ended by the server at their timeouts
            assert r.bookmarks == 0 and r.error is None and r.lists == 1 and r.overruns == 0
            assert r.age() == 0.0


async def test_a_403_clears_once_allowed_again_without_waiting_for_a_bookmark() -> None:
    """With the error kept until a real success, a watch that 403'd and then opens again proves nothing
    until an event (up to the silence limit on a quiet resource without bookmarks), and ``/readyz`` would
    have said "403" for that long after RBAC was fixed. A 403 relists: the list clears it at once."""
    async with ApiServerDouble(bookmark_interval=1000.0) as double:
        create_pod(double)
        client = await KubeClient.connect(server=double.url)
        r = Reflector(client, POD, namespace="default", seed=1, backoff=_fast())
        r.start()
        try:
            await r.wait_synced()
            await until(lambda: r.watches >= 1)
            double.forbid(POD)
            double.cut_watches()
            await until(lambda: (r.error or "").startswith("403"))
            lists = r.lists
            double.forbid(POD, False)
            await until(lambda: r.error is None, within_s=30.0)
            assert r.lists > lists and r.events == 0  # cleared by a list, not by an event
        finally:
            await r.stop()
            await client.close()


async def test_a_watch_held_open_before_it_is_cut_waits_the_initial_back_off() -> None:
    """The back-off grows for watches that fail as they open, not for one that worked for a while: a quiet
    watch (no event, no bookmark) held for over ``HELD_OPEN_S`` and then cut waits the initial back-off,
    every time (docs/kubernetes.md "How soon a readiness change reaches the picks")."""

    class Recording(Backoff):
        def next(self, rng: random.Random) -> float:
            wait = super().next(rng)
            steps.append(self._next)
            return wait

    steps: list[float] = []
    async with ApiServerDouble(bookmark_interval=1000.0) as double:
        client = await KubeClient.connect(server=double.url)
        r = Reflector(client, POD, namespace="default", seed=1, backoff=Recording(initial=0.05, maximum=5.0))
        r.start()
        try:
            await r.wait_synced()
            for n in (1, 2, 3):
                await until(lambda n=n: r.watches == n)  # type: ignore[misc]
                await asyncio.sleep(HELD_OPEN_S + 0.2)
                double.cut_watches()
            await until(lambda: len(steps) >= 3)
            assert steps[:3] == [0.05, 0.05, 0.05] and r.events == 0
        finally:
            await r.stop()
            await client.close()
