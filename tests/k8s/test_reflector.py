"""The reflector against the double: list + watch, bookmarks, reconnects, 410 relist with reconcile, 403."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Backoff, Reflector


def _pod(name: str, app: str = "a") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip


async def _until(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def reflector(kube: KubeClient):
    r = Reflector(kube, R.POD, namespace="default", page_size=2, backoff=Backoff(initial=0.05, maximum=0.2))
    seen: list[tuple[str, str]] = []
    r.add_listener(lambda t, o: seen.append((t, o["metadata"]["name"])))
    r.seen = seen  # type: ignore[attr-defined]
    yield r
    await r.stop()


def _names(r: Reflector) -> set[str]:
    return {k[1] for k in r.items}


async def test_lists_in_pages_then_follows_the_watch(double: ApiServerDouble, reflector: Reflector) -> None:
    for i in range(5):
        double.create(_pod(f"p{i}"))
    reflector.start()
    await reflector.wait_synced()
    assert _names(reflector) == {f"p{i}" for i in range(5)}
    double.create(_pod("p5"))
    double.delete(R.POD, "p0")
    await _until(lambda: _names(reflector) == {f"p{i}" for i in range(1, 6)})
    await _until(lambda: reflector.bookmarks > 0)  # bookmarks move the resourceVersion forward
    assert reflector.resource_version == str(double.rv)
    assert reflector.lists == 1


async def test_a_cut_watch_resumes_without_a_relist(double: ApiServerDouble, reflector: Reflector) -> None:
    double.create(_pod("a"))
    reflector.start()
    await reflector.wait_synced()
    await _until(lambda: double.watch_count == 1)
    double.cut_watches()
    double.create(_pod("b"))  # while disconnected: replayed from history on the re-watch
    await _until(lambda: _names(reflector) == {"a", "b"})
    assert reflector.lists == 1 and reflector.watches >= 2


async def test_410_relists_and_reconciles(double: ApiServerDouble, reflector: Reflector) -> None:
    for n in ("a", "b", "c"):
        double.create(_pod(n))
    reflector.start()
    await reflector.wait_synced()
    await _until(lambda: double.watch_count == 1)
    # Cut, change things and compact with no await in between: the re-watch must get 410.
    double.cut_watches()
    double.delete(R.POD, "a")
    double.create(_pod("d"))
    double.patch(R.POD, "b", "default", {"metadata": {"labels": {"app": "z"}}})
    double.compact()
    await _until(lambda: reflector.gone == 1 and reflector.lists == 2)
    assert _names(reflector) == {"b", "c", "d"}
    assert ("DELETED", "a") in reflector.seen  # type: ignore[attr-defined]
    assert ("ADDED", "d") in reflector.seen  # type: ignore[attr-defined]
    assert ("MODIFIED", "b") in reflector.seen  # type: ignore[attr-defined]
    assert reflector.items[("default", "b")]["metadata"]["labels"] == {"app": "z"}


async def test_403_is_reported_then_recovers(
    double: ApiServerDouble, reflector: Reflector, caplog: pytest.LogCaptureFixture
) -> None:
    double.forbid(R.POD)
    with caplog.at_level(logging.ERROR, "kvgate.k8s.reflector"):
        reflector.start()
        await _until(lambda: reflector.error is not None)
    assert reflector.error is not None and reflector.error.startswith("403 Forbidden (RBAC)")
    assert "list and watch on pods" in caplog.text
    assert not reflector.synced.is_set()
    double.forbid(R.POD, False)
    double.create(_pod("a"))
    await reflector.wait_synced()
    await _until(lambda: reflector.error is None and _names(reflector) == {"a"})


async def test_a_custom_resource_with_a_field_selector(double: ApiServerDouble, kube: KubeClient) -> None:
    for n in ("mine", "other"):
        double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                       "metadata": {"name": n}, "spec": {"targetPorts": [{"number": 8000}]}})  # fmt: skip
    r = Reflector(kube, R.INFERENCE_POOL, namespace="default", field_selector="metadata.name=mine")
    r.start()
    try:
        await r.wait_synced()
        assert _names(r) == {"mine"}
        double.patch(R.INFERENCE_POOL, "mine", "default", {"spec": {"targetPorts": [{"number": 9000}]}})
        await _until(lambda: r.items[("default", "mine")]["spec"]["targetPorts"] == [{"number": 9000}])
    finally:
        await r.stop()


async def test_a_cut_watch_waits_the_first_backoff_once_and_the_410_relists_at_once(
    double: ApiServerDouble, kube: KubeClient
) -> None:
    """What docs/kubernetes.md "How soon a readiness change reaches the picks" counts on: a cut watch
    waits the initial back-off (not one grown by earlier failures: a watch that opened resets it), and the
    410 that follows relists with no further wait."""
    grown: list[float] = []  # the back-off step of every wait, in order

    class Recording(Backoff):
        def next(self, rng: random.Random) -> float:
            wait = super().next(rng)
            grown.append(self._next)
            return wait

    r = Reflector(kube, R.POD, namespace="default", backoff=Recording(initial=0.05, maximum=5.0))
    double.forbid(R.POD)
    r.start()
    try:
        await _until(lambda: len(grown) >= 3)  # 403s: 0.05, 0.1, 0.2
        double.forbid(R.POD, False)
        double.create(_pod("a"))
        await r.wait_synced()
        await _until(lambda: double.watch_count == 1)
        before = len(grown)
        double.cut_watches()
        double.set_pod_status("a", ready=False)
        double.compact()
        await _until(lambda: r.gone == 1 and r.lists == 2 and double.watch_count == 1)
        assert grown[before:] == [0.05]
    finally:
        await r.stop()
