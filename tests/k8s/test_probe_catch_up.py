"""The probe's catch-up check (k8s17; session 16's closing note: "a proxy holding one watch stuck while the
server answers probes is found only at the client deadline"). A limit=1 probe answered 2xx proves the server
answers, and its one object is checked against the copy; a change to *another* object of the selection,
which a watch held by a proxy never delivers, was seen only at the watch's client deadline (5-10 min + 15 s).
Now, when the probe's list resourceVersion is past the watch's last one, a second short watch from the
watch's last resourceVersion replays what the selection changed since; a change at or below the probe's
resourceVersion that the open watch still has not delivered ``probe_timeout_s`` later ends it and relists.
A list's resourceVersion is etcd's global revision (other kinds move it: checked on a real 1.20.2 server,
``tests/k8s_real``), so a quiet selection whose cluster changes elsewhere is checked and *not* relisted.
Against the API-server double over real HTTP (``hold_watches``: a proxy holding the open watches while new
requests are answered), the probe's period and deadlines on injected time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from fake_time import FakeTime
from k8s.probe_kit import advance_to, probed_reflector
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.resources import POD


def _pod(name: str, namespace: str = "default") -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip


def _configmap(name: str) -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": {"k": "v"}}  # fmt: skip


def _second_watches(double: ApiServerDouble) -> list[dict[str, list[str]]]:
    """The query of every pods watch after the first (the reflector's own)."""
    out = []
    for line in double.requests:
        verb, target = line.split(" ", 1)
        u = urlsplit(target)
        q = parse_qs(u.query)
        if verb == "GET" and u.path == "/api/v1/namespaces/default/pods" and q.get("watch") == ["true"]:
            out.append(q)
    return out[1:]


async def test_a_watch_a_proxy_holds_is_relisted_once_its_selection_changed() -> None:
    """A proxy holds the open watch; pod "b" is created (not the probe's first object: "a" is, unchanged).
    At 60 s the probe is answered at a resourceVersion past the watch's: the catch-up watch replays ADDED b
    at once; 10 s later the held watch still read nothing: it ends and the reflector relists (the copy gets
    b). Fails before: no relist until the watch's client deadline (5-10 min + 15 s)."""
    ft = FakeTime()
    async with ApiServerDouble(bookmark_interval=0.2) as double, probed_reflector(double, ft) as r:
        assert double.hold_watches() == 1
        double.create(_pod("b"))
        await advance_to(ft, 60.0)
        await until(lambda: r.catch_ups == 1)
        await advance_to(ft, 69.9)
        assert r.lists == 1 and r.missed == 0 and ("default", "b") not in r.items
        await advance_to(ft, 70.0)
        await until(lambda: r.lists == 2)
        assert r.missed == 1 and r.stuck == 0 and ("default", "b") in r.items
        assert r.probes == 0, "the probe that showed the watch stuck was credited"
        [second] = _second_watches(double)[:1]
        assert second["resourceVersion"] == [
            str(int(r.items[("default", "a")]["metadata"]["resourceVersion"]))
        ]
        assert second["timeoutSeconds"] == ["1"]


async def test_a_quiet_selection_is_not_relisted_when_other_kinds_change() -> None:
    """A healthy quiet watch while the cluster changes elsewhere (a ConfigMap a minute): each probe's list
    resourceVersion is past the watch's (the list's is the global one), so each is followed by a catch-up
    watch, which replays nothing and ends: no relist, every probe credited. Before anything changed (the
    list at the watch's resourceVersion), no catch-up watch at all. (A pod in another namespace moves the
    pods' type resourceVersion, and the cacher bookmarks the watch: each bookmark that moves its
    resourceVersion is a proof, the repeats are not: test_probe_repeated_bookmarks.py.)"""
    ft = FakeTime()
    async with ApiServerDouble(bookmark_interval=0.2) as double, probed_reflector(double, ft) as r:
        await advance_to(ft, 60.0)
        await until(lambda: r.probes == 1)
        assert r.catch_ups == 0 and _second_watches(double) == []
        for n in range(2, 5):
            double.create(_configmap(f"cm{n}"))
            await advance_to(ft, 60.0 * n)
            await until(lambda n=n: r.probes == n)  # type: ignore[misc]
            assert r.last_sync == 60.0 * n and r.age() == 0.0
        assert r.catch_ups == 3 and r.missed == 0 and r.lists == 1 and r.watches == 1 and r.error is None


@pytest.mark.parametrize("gone", [False, True], ids=["replayed", "answered-410"])
async def test_a_change_the_watch_delivers_late_is_no_stuck_watch(gone: bool) -> None:
    """The catch-up watch replays pod b (or, ``gone``, is answered 410 Gone: the double's watch cache was
    compacted past the watch's resourceVersion); the open watch delivers it within the probe's 10 s (the
    proxy lets go): no relist (a late delivery, as for a replayed change)."""
    ft = FakeTime()
    async with ApiServerDouble(bookmark_interval=0.2) as double, probed_reflector(double, ft) as r:
        double.hold_watches()
        double.create(_pod("b"))
        if gone:
            double.compact()
        await advance_to(ft, 60.0)
        await until(lambda: r.catch_ups == 1)
        double.release_watches()
        await until(lambda: ("default", "b") in r.items)
        await advance_to(ft, 75.0)
        assert r.lists == 1 and r.missed == 0 and r.watches == 1


async def test_a_resource_version_the_watch_cache_no_longer_holds_relists_the_held_watch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The catch-up watch is answered 410 Gone (200 and an ERROR event, as kube-apiserver 1.20's watch cache
    answers a resourceVersion it no longer holds: ``tests/k8s_real``): the type moved on past the cache's
    window while the open watch read nothing that moved it, where a delivering watch reads the cacher's
    bookmark of the moved type about every minute. The open watch still reads nothing 10 s later: it ends
    and relists (k8s18; the copy gets b). Fails before: inconclusive, no relist until the watch's client
    deadline (5-10 min + 15 s)."""
    caplog.set_level(logging.WARNING, logger="kvgate.k8s.reflector")
    ft = FakeTime()
    async with ApiServerDouble(bookmark_interval=0.2) as double, probed_reflector(double, ft) as r:
        double.hold_watches()
        double.create(_pod("b"))
        double.compact()
        await advance_to(ft, 60.0)
        await until(lambda: r.catch_ups == 1)
        await advance_to(ft, 69.9)
        assert r.lists == 1 and r.missed == 0
        await advance_to(ft, 70.0)
        await until(lambda: r.lists == 2)
        assert r.missed == 1 and r.stuck == 0 and r.probes == 0 and ("default", "b") in r.items
    [said] = [rec.getMessage() for rec in caplog.records if "second watch" in rec.getMessage()]
    assert "answered 410 Gone (too old resource version" in said and said.endswith("; relisting"), said


class _GoneStatus(ApiServerDouble):
    """A double that answers the catch-up watch (``timeoutSeconds=1``) with an HTTP 410 Status, as a
    server without the watch cache may (the error before the stream, not an ERROR event in it)."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true" and request.query.get("timeoutSeconds") == "1":
            self.requests.append(f"{request.method} {request.path_qs}")
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                      "reason": "Expired", "message": "too old resource version: 5 (9)"}  # fmt: skip
            return web.json_response(status, status=410)
        return await super()._handle(request)


async def test_a_catch_up_watch_answered_http_410_relists_the_held_watch() -> None:
    """The same verdict when the 410 comes as the HTTP status."""
    ft = FakeTime()
    double = _GoneStatus(bookmark_interval=0.2)
    async with double, probed_reflector(double, ft) as r:
        double.hold_watches()
        double.create(_configmap("cm"))
        await advance_to(ft, 60.0)
        await until(lambda: r.catch_ups == 1)
        await advance_to(ft, 70.0)
        await until(lambda: r.lists == 2)
        assert r.missed == 1 and r.probes == 0


async def test_a_server_whose_watches_are_all_stuck_is_relisted(caplog: pytest.LogCaptureFixture) -> None:
    """A stuck watch cache (every watch open and silent, lists answered) while only another kind changed:
    the probe's object matches the copy, but the catch-up watch (timeoutSeconds 1) is not ended by the
    server within 10 s (at 70 s), and the open watch read nothing 10 s later either (80 s): relist, the
    WARNING naming the pods reflector and why (review s17-k8s F6: the assertion here could not fail)."""
    caplog.set_level(logging.WARNING, logger="kvgate.k8s.reflector")
    ft = FakeTime()
    async with ApiServerDouble(bookmark_interval=0.2) as double, probed_reflector(double, ft) as r:
        double.stall(lists=False)
        double.create(_configmap("cm"))
        await advance_to(ft, 60.0)
        await until(lambda: r.catch_ups == 1)
        await advance_to(ft, 79.9)
        assert r.lists == 1 and r.missed == 0
        await advance_to(ft, 80.0)
        await until(lambda: r.lists == 2)
        assert r.missed == 1 and r.stuck == 0 and r.probes == 0
    [said] = [rec.getMessage() for rec in caplog.records if "second watch" in rec.getMessage()]
    assert said.startswith(f"reflector {POD.plural}.") and "was not ended by the server within 10 s" in said
    assert "watches are stuck" in said and said.endswith("; relisting"), said


class _SecondWatchUnanswered(ApiServerDouble):
    """A double whose catch-up watches (``timeoutSeconds=1``) get no answer at all, not even the 200 (a
    server or proxy slow to open new watches), until ``unstall``."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._answer = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true" and request.query.get("timeoutSeconds") == "1":
            self.requests.append(f"{request.method} {request.path_qs}")
            await self._answer.wait()
        return await super()._handle(request)

    def unstall(self) -> None:
        super().unstall()
        self._answer.set()


async def test_a_second_watch_never_answered_200_is_inconclusive() -> None:
    """The catch-up watch is not answered (no 200) within the probe's 10 s: it proves nothing either way
    (the server may be slow to open watches, not stuck), so the probe is credited and there is no relist,
    at 80 s or later. Catches review s17-k8s mutation M4 (``_second_open`` ignored: "stuck", relisted at
    80 s), which every k8s17 test let pass."""
    ft = FakeTime()
    double = _SecondWatchUnanswered(bookmark_interval=0.2)
    async with double, probed_reflector(double, ft) as r:
        double.hold_watches()
        double.create(_configmap("cm"))
        await advance_to(ft, 60.0)
        await until(lambda: r.catch_ups == 1 and len(_second_watches(double)) == 1)
        await advance_to(ft, 70.0)
        await until(lambda: r.probes == 1)
        assert r.last_sync == 60.0
        await advance_to(ft, 95.0)
        assert r.lists == 1 and r.missed == 0 and r.stuck == 0 and r.watches == 1 and r.error is None
