"""Every watch is bounded as client-go bounds it (session 15): ``timeoutSeconds`` drawn per watch from
[5, 10) minutes, a client-side deadline a margin above it, and a watch that proves nothing (not ended by
the server, cut early having read nothing) is followed by a relist, so a stuck-but-connected API server (or
proxy) that sends nothing, not even bookmarks, turns stale (within ~10 min 15 s) instead of looking in sync.
A quiet watch that reads nothing is no reason to relist (review s15-k8s F1): kube-apiserver sends no
bookmark on a type nobody writes. Against
the API-server double over real HTTP on loopback (``ApiServerDouble.stall``: watches answer 200 and then
send nothing, lists hang)."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from k8s.reflector_kit import create_pod, pod_reflector, until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import MIN_WATCH_TIMEOUT_S, Reflector
from kvgate.k8s.resources import POD
from kvgate.k8s.staleness import StalenessMonitor
from kvgate.k8s.stalepolicy import StalenessPolicy


def _watch_queries(double: ApiServerDouble) -> list[dict[str, list[str]]]:
    """The query of every watch request the double received, in order (parsed from the wire)."""
    out = []
    for line in double.requests:
        _, target = line.split(" ", 1)
        q = parse_qs(urlsplit(target).query)
        if q.get("watch") == ["true"]:
            out.append(q)
    return out


async def test_every_watch_asks_for_its_own_timeout_of_5_to_10_minutes(double: ApiServerDouble) -> None:
    """client-go's reflector: ``timeoutSeconds = int(minWatchTimeout * (rand.Float64() + 1.0))`` with
    minWatchTimeout 5 min, an integer query parameter, with ``allowWatchBookmarks=true`` and the
    resourceVersion to resume from. Fails before: every watch asked for 300 s."""
    create_pod(double)
    client = await KubeClient.connect(server=double.url)
    r = Reflector(client, POD, namespace="default", seed=7)
    r.start()
    try:
        await r.wait_synced()
        for n in range(1, 5):
            await until(lambda n=n: r.watches == n and double.watch_count == 1)  # type: ignore[misc]
            double.cut_watches()
        await until(lambda: r.watches == 5)
    finally:
        await r.stop()
        await client.close()
    queries = _watch_queries(double)
    assert len(queries) >= 5
    timeouts = [int(q["timeoutSeconds"][0]) for q in queries]
    assert all(MIN_WATCH_TIMEOUT_S == 300 <= t < 600 for t in timeouts), timeouts
    assert len(set(timeouts)) > 1, f"every watch asked for the same timeout: {timeouts}"
    for q in queries:
        assert q["allowWatchBookmarks"] == ["true"] and q["resourceVersion"][0], q


async def test_a_stuck_api_server_holding_the_watch_open_turns_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API server (or a proxy) keeps the watch's connection open and sends nothing, not even the
    bookmarks it was asked for; new watches open (200) and stay silent the same way; lists hang. Before:
    each silent watch ended at the silence limit counted as in sync, so the copy looked fresh forever (age 0,
    no WARNING). Now the watch the server never ends reaches the client's deadline and proves nothing, the
    relist that follows hangs, and the copy ages: stale, with the WARNING; once the server answers again the
    relist completes (in sync, INFO). Scaled: timeoutSeconds 1-2 s, margin 0.5 s, bookmarks every 0.2 s
    before the stall (a generous double: etcd's progress notify moving the cache)."""
    async with ApiServerDouble(bookmark_interval=0.2, cacher_bookmarks=False) as double:
        now = [0.0]
        async with pod_reflector(double, now, min_watch_timeout_s=1, watch_deadline_margin_s=0.5) as r:
            monitor = StalenessMonitor([r], [r], StalenessPolicy(stale_after_s=120.0))
            await r.wait_synced()
            await until(lambda: r.bookmarks >= 1)
            lists = r.lists
            double.stall(lists=True)
            await until(lambda: r.overruns >= 1)  # (the client deadline: 1.5 s)
            now[0] = 400.0
            with caplog.at_level(logging.WARNING, logger="kvgate.k8s.staleness"):
                monitor.check()
            assert r.age() == 400.0, "a silent watch on a stuck API server counted as in sync"
            assert r.lists == lists and r in monitor.stale()
            assert any("not in sync with the API server for 400 s" in m for m in caplog.messages), (
                caplog.messages
            )
            double.unstall()  # the hung relist is answered
            await until(lambda: r.lists > lists)
            with caplog.at_level(logging.INFO, logger="kvgate.k8s.staleness"):
                monitor.check()
            assert r.age() == 0.0 and not monitor.stale()
            assert any("in sync with the API server again" in m for m in caplog.messages), caplog.messages


async def test_a_stuck_watch_whose_relist_answers_is_in_sync_through_the_list() -> None:
    """Only the watch is stuck (a proxy holding it; lists still answer): the silent watch proves nothing,
    the relist does. The copy is in sync at the relist, not at the silent end."""
    async with ApiServerDouble(bookmark_interval=0.2, cacher_bookmarks=False) as double:
        now = [0.0]
        async with pod_reflector(double, now, min_watch_timeout_s=1, watch_deadline_margin_s=0.5) as r:
            await r.wait_synced()
            await until(lambda: r.bookmarks >= 1)
            double.stall(lists=False)
            lists = r.lists
            now[0] = 400.0
            await until(lambda: r.overruns >= 1 and r.lists > lists)
            assert r.age() == 0.0 and r.error is None


async def test_a_relist_that_times_out_is_an_error_and_the_copy_stays_stale() -> None:
    """The relist after a silent watch hangs: it ends at the list timeout with an error (``/readyz`` and
    the stale WARNING name it), and the reflector keeps trying."""
    async with ApiServerDouble(bookmark_interval=0.2, cacher_bookmarks=False) as double:
        create_pod(double)
        client = await KubeClient.connect(server=double.url)
        now = [0.0]
        r = Reflector(client, POD, namespace="default", clock=lambda: now[0], min_watch_timeout_s=1,
                      watch_deadline_margin_s=0.5, list_timeout_s=0.3, seed=1)  # fmt: skip
        r.start()
        try:
            await r.wait_synced()
            double.stall(lists=True)
            await until(lambda: r.error is not None)  # the deadline, then the relist's timeout
            now[0] = 400.0
            assert "TimeoutError" in (r.error or ""), r.error
            assert r.age() == 400.0 and r.overruns >= 1
            double.unstall()
            await until(lambda: r.error is None)
            assert r.age() == 0.0
        finally:
            await r.stop()
            await client.close()


async def test_a_watch_the_server_does_not_end_is_ended_at_the_client_deadline() -> None:
    """A server (or proxy) that ignores ``timeoutSeconds`` and keeps the watch going: the client's own
    deadline, a margin above it, ends the watch, and the reflector relists. Fails before: no client
    deadline (only a silence limit, which bookmarks kept resetting): the watch never ended. Scaled:
    timeoutSeconds 1 s, margin 0.5 s."""
    async with ApiServerDouble(bookmark_interval=0.2, cacher_bookmarks=False) as double:
        double.ignore_watch_timeout = True
        create_pod(double)
        client = await KubeClient.connect(server=double.url)
        r = Reflector(client, POD, namespace="default", min_watch_timeout_s=1, watch_deadline_margin_s=0.5,
                      seed=1)  # fmt: skip
        r.start()
        try:
            await r.wait_synced()
            await until(lambda: r.overruns >= 2 and r.lists >= 3, within_s=30.0)
            assert r.error is None
        finally:
            await r.stop()
            await client.close()
        assert {q["timeoutSeconds"][0] for q in _watch_queries(double)} == {"1"}


async def test_a_quiet_watch_the_server_ends_at_its_timeout_is_in_sync_without_a_relist() -> None:
    """The other side: a server without bookmarks that ends each quiet watch at its ``timeoutSeconds``
    (what kube-apiserver does) ran the watch to its end: in sync at that end, and re-watched from the
    resourceVersion with no relist. Scaled: timeoutSeconds 1 s."""
    async with ApiServerDouble(bookmark_interval=1000.0) as double:
        create_pod(double)
        client = await KubeClient.connect(server=double.url)
        now = [0.0]
        r = Reflector(client, POD, namespace="default", clock=lambda: now[0], min_watch_timeout_s=1,
                      seed=1)  # fmt: skip
        r.start()
        try:
            await r.wait_synced()
            await until(lambda: r.watches >= 1)
            now[0] = 400.0
            await until(lambda: r.watches >= 3)
            assert r.age() == 0.0 and r.lists == 1 and r.bookmarks == 0 and r.events == 0
            assert r.overruns == 0 and r.unproven == 0
        finally:
            await r.stop()
            await client.close()


async def test_a_healthy_quiet_watch_does_not_relist() -> None:
    """Review s15-k8s F1 (its test, adapted): on a healthy quiet cluster (the double as kube-apiserver's
    cacher: no bookmark, nothing changes) the reflector re-watches from its resourceVersion at each
    server end and never lists again, as client-go. Fails before: session 15 relisted after each 90 s of
    silence (one LIST per reflector per ~90 s where etcd's progress notify is at its 10 min default).
    Scaled: timeoutSeconds 1-2 s."""
    async with ApiServerDouble(bookmark_interval=0.2) as double:  # cacher bookmarks: none here
        create_pod(double)
        client = await KubeClient.connect(server=double.url)
        r = Reflector(client, POD, namespace="default", min_watch_timeout_s=1, watch_deadline_margin_s=5.0,
                      seed=1)  # fmt: skip
        r.start()
        try:
            await r.wait_synced()
            await until(lambda: r.watches >= 4, within_s=30.0)  # three quiet watches the server ended
            assert r.bookmarks == 0 and r.overruns == 0 and r.unproven == 0 and r.error is None
            assert r.lists == 1, f"{r.lists} LISTs for {r.watches} quiet watches on a healthy server"
        finally:
            await r.stop()
            await client.close()


async def test_the_double_bookmarks_as_the_cacher_once_the_type_moved_past_the_watch() -> None:
    """The double holds bookmarks back as kube-apiserver's cacher does: none while the type's last event is
    at or below the watch's start resourceVersion; once a pod changes, bookmarks with that event's
    resourceVersion come. (Another type's change does not move it.)"""
    async with ApiServerDouble(bookmark_interval=0.2) as double:
        now = [0.0]
        async with pod_reflector(double, now, min_watch_timeout_s=60) as r:  # (it creates pod a)
            await r.wait_synced()
            await until(lambda: r.watches >= 1)
            double.create({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "c", "namespace": "default"}})  # fmt: skip
            await asyncio.sleep(0.7)
            assert r.bookmarks == 0
            double.set_pod_status("a", ip="10.0.0.9", ready=True)
            await until(lambda: r.bookmarks >= 2)
            assert r.lists == 1 and r.resource_version == str(double.rv)
