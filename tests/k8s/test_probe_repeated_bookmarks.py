"""closing-s17 "Noticed and left undone" (Kubernetes): a pod change in another namespace moves the cacher's
bookmarks, so that a quiet watch was never probed. kube-apiserver's cacher bookmarks every watch about
once a minute with the type's last resourceVersion once that is past the watch's start (read from the real
1.20.2 server, tests/k8s_real: one pod labelled in another namespace, then BOOKMARKs at 60 s and 120 s,
and 2 s before the watch's end, all at that one resourceVersion). Each read as the watch's proof: the
liveness probe's silence started over, so with that change the watch was never probed for the rest of its
5-10 min, whatever the watch cache did meanwhile. A bookmark repeating the resourceVersion shows the stream
delivers, not that the watch cache follows etcd (its etcd watch stuck, it still bookmarks what it saw
last). Now only a bookmark that moves the resourceVersion is a proof (as an event is): the delivered stream
is then complete up to it. A repeat is counted (``bookmarks_repeated``) but the probe's 60 s run on.

The API-server double plays the cacher's bookmarks (``cacher_bookmarks``, every 0.2 s of real time here)
and, for the second test, a watch cache that stopped following storage (``freeze_cache``); the probe's
time is injected.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fake_time import FakeTime
from k8s.probe_kit import advance_to, probed_reflector
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.resources import POD


async def _advance_reading_bookmarks(ft: FakeTime, r: Reflector, when: float) -> None:
    """Moves the injected time to ``when`` 10 s at a time, the watch reading a bookmark after each step (as
    the cacher's come, spread over the probe's 60 s, not all before it), until it relists."""
    while ft.now < when and r.lists == 1:
        await advance_to(ft, min(when, ft.now + 10.0))
        marks = r.bookmarks
        await until(lambda marks=marks: r.bookmarks > marks or r.lists > 1)  # type: ignore[misc]


def _pod(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip


async def test_a_quiet_watch_whose_bookmarks_repeat_one_resource_version_is_still_probed() -> None:
    """A pod created in another namespace after the watch opened: the first bookmark moves the watch's
    resourceVersion (a proof), the next ones repeat it. The probe still comes 60 s after that proof and is
    credited (no relist). Fails before: the repeats kept it from ever being probed."""
    double = ApiServerDouble(bookmark_interval=0.2)
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        double.create(_pod("elsewhere", "other"))
        await until(lambda: r.bookmarks >= 4)
        assert r.resource_version == str(double.rv)
        await _advance_reading_bookmarks(ft, r, 60.0)
        await until(lambda: r.probes == 1 or r.lists > 1, within_s=30.0)
        assert r.probes == 1, f"never probed: {r.bookmarks} bookmarks, all but the first repeats"
        assert (r.lists, r.behind, r.stuck, r.catch_ups) == (1, 0, 0, 0) and r.last_sync == 60.0
        assert r.proofs == 1 and r.bookmarks_repeated == r.bookmarks - 1  # (the first bookmark only)


async def test_a_watch_cache_that_stopped_following_storage_is_found_despite_its_bookmarks() -> None:
    """Why it matters: the watch cache stops following storage (its etcd watch stuck) after a change
    elsewhere; the pod of the watched selection changes in storage, the watch hears nothing of it but the
    cacher's repeated bookmarks. The probe (a consistent list: etcd) at 60 s shows the copy behind: the
    watch ends and the relist brings the change. Fails before: never probed, the copy stays behind until
    the watch's end (5-10 min), counted in sync all along."""
    double = ApiServerDouble(bookmark_interval=0.2)
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        double.create(_pod("elsewhere", "other"))
        await until(lambda: r.bookmarks >= 2)
        double.freeze_cache()
        changed = double.patch(POD, "a", "default", {"metadata": {"labels": {"x": "y"}}})
        await until(lambda: r.bookmarks >= 5)
        rv = changed["metadata"]["resourceVersion"]
        assert r.items[("default", "a")]["metadata"]["resourceVersion"] != rv
        await _advance_reading_bookmarks(ft, r, 60.0)
        await until(lambda: r.lists == 2 or r.probes > 0, within_s=30.0)
        assert r.behind == 1 and r.lists == 2, f"not found: probes {r.probes}, behind {r.behind}"
        double.freeze_cache(False)
        await until(lambda: r.watches >= 2)
        assert r.items[("default", "a")]["metadata"]["resourceVersion"] == rv


async def test_bookmarks_that_move_the_resource_version_are_proofs_no_probe_needed() -> None:
    """The other side: pods keep changing in another namespace, so each bookmark carries a newer
    resourceVersion (the watch cache follows etcd and the stream is complete up to it): a proof, as an
    event is; the quiet watch is not probed while they come."""
    double = ApiServerDouble(bookmark_interval=0.2)
    ft = FakeTime()
    async with double, probed_reflector(double, ft) as r:
        for step in range(1, 4):  # a change elsewhere at 50, 100, 150 s; its bookmark read at once
            await advance_to(ft, 50.0 * step)
            double.create(_pod(f"elsewhere-{step}", "other"))
            await until(lambda: r.resource_version == str(double.rv))
        await advance_to(ft, 200.0)
        await asyncio.sleep(0.2)
        assert r.probes == 0 and r.lists == 1 and r.last_sync == 150.0
        await advance_to(ft, 210.0)
        await until(lambda: r.probes == 1)
