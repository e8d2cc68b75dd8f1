"""Stopping the clusters' Kubernetes source cleanly whatever is under way: a stop cancelled while the
import controller's loop ends still stops the members' watches; a gateway stopped during a reload's
``kubernetes:`` swap leaves no API-server client open nor a watch running; a failing controller stop does
not keep the gateway's own stop from finishing. API-server doubles over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.multicluster import source as S
from kvgate.multicluster.clusters import ClustersFile, parse
from kvgate.multicluster.imports import ImportController, Member
from kvgate.multicluster.serve import GlobalGateway

from .kube_objects import inference_pool as _pool


async def _until(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.fixture
async def doubles() -> AsyncIterator[tuple[ApiServerDouble, ApiServerDouble]]:
    async with ApiServerDouble(bookmark_interval=0.2) as hub, ApiServerDouble(bookmark_interval=0.2) as east:
        east.create(_pool("llama", "10.1.0.2:8080"))
        yield hub, east


def _section(hub: str, east: str, rtt_ms: float) -> dict[str, Any]:
    return {"kubernetes": {"server": hub, "import": "default/llama",
                           "members": [{"name": "east", "server": east, "rtt_ms": rtt_ms}]}}  # fmt: skip


def _closed(c: KubeClient) -> bool:
    return bool(c.api.rest_client.pool_manager.closed)


def _watching(ctl: ImportController) -> list[bool]:
    return [r._task is not None and not r._task.done() for r in ctl._reflectors]


async def test_a_stop_cancelled_while_the_loop_ends_still_stops_the_watches(
    doubles: tuple[ApiServerDouble, ApiServerDouble],
) -> None:
    hub_d, east_d = doubles
    clients = [await KubeClient.connect(server=d.url) for d in (hub_d, east_d)]
    ctl = ImportController(clients[0], [Member("east", clients[1])])
    await ctl.start()
    try:
        await _until(lambda: ctl.reconciles > 0 and ctl._reflectors[0].synced.is_set())
        assert _watching(ctl) == [True]
        stop = asyncio.create_task(ctl.stop())
        await asyncio.sleep(0)  # the stop waits for the reconcile loop to end...
        stop.cancel()  # ...and is cancelled there (a bounded stop giving up)
        await asyncio.wait([stop])
        assert stop.cancelled()
        assert _watching(ctl) == [False]
    finally:
        await ctl.stop()
        for c in clients:
            await c.close()


async def test_a_stop_during_a_swap_closes_every_client_and_stops_every_watch(
    doubles: tuple[ApiServerDouble, ApiServerDouble], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload changed the section (the member's RTT): the new clients are made, the old controller is
    stopping, slowly; the gateway stops meanwhile, past ``STOP_WAIT_S``: the swap is cancelled. Every
    client made is closed and no controller watches on."""
    hub_d, east_d = doubles
    made: list[KubeClient] = []
    connect = KubeClient.connect.__func__  # type: ignore[attr-defined]

    async def recording_connect(cls: type[KubeClient], *a: Any, **kw: Any) -> KubeClient:
        c: KubeClient = await connect(cls, *a, **kw)
        made.append(c)
        return c

    controllers: list[ImportController] = []
    stop = ImportController.stop

    async def slow_stop(self: ImportController) -> None:  # a controller whose stop takes its time
        controllers.append(self)
        try:
            await asyncio.sleep(30.0)
        finally:
            await stop(self)

    monkeypatch.setattr(KubeClient, "connect", classmethod(recording_connect))
    monkeypatch.setattr(S, "STOP_WAIT_S", 0.3)
    src = S.ClusterSource(parse(_section(hub_d.url, east_d.url, 5)), lambda _cfg: None)
    await src.start()
    old = src.imports
    assert old is not None
    monkeypatch.setattr(ImportController, "stop", slow_stop)
    src.reload(parse(_section(hub_d.url, east_d.url, 40)))
    await _until(lambda: len(made) == 4 and controllers == [old])  # new clients made; the old stopping
    await asyncio.wait_for(src.stop(), 30.0)
    assert [_closed(c) for c in made] == [True] * 4
    assert _watching(old) == [False]
    assert src.imports is None


async def test_a_failing_controller_stop_does_not_keep_the_gateway_from_stopping(
    doubles: tuple[ApiServerDouble, ApiServerDouble], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The import controller's stop raises (a member's watch had died on a bug): the gateway's stop still
    closes the clients, stops the fetcher and closes its server and router."""
    hub_d, east_d = doubles
    f = tmp_path / "clusters.yaml"
    f.write_text(f"kubernetes:\n  server: {hub_d.url}\n  import: default/llama\n  members:\n"
                 f"  - {{name: east, server: '{east_d.url}', rtt_ms: 5}}\n")  # fmt: skip
    gw = GlobalGateway(ClustersFile(f).config, "kvgate", seed=0, clusters_file=ClustersFile(f))
    port = await gw.start("127.0.0.1", 0)
    await _until(lambda: list(gw.router.states) == ["east"])
    clients = list(gw.source._clients)
    stop = ImportController.stop

    async def failing_stop(self: ImportController) -> None:
        await stop(self)
        raise RuntimeError("a member's watch had died")

    monkeypatch.setattr(ImportController, "stop", failing_stop)
    await asyncio.wait_for(gw.stop(), 30.0)
    assert clients and all(_closed(c) for c in clients)
    with pytest.raises(OSError):  # the server is closed
        await asyncio.open_connection("127.0.0.1", port)


async def test_one_client_close_that_raises_does_not_leave_the_others_open(
    doubles: tuple[ApiServerDouble, ApiServerDouble], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub client's close raises: the member's client is closed all the same, and the stop ends."""
    hub_d, east_d = doubles
    src = S.ClusterSource(parse(_section(hub_d.url, east_d.url, 5)), lambda _cfg: None)
    await src.start()
    clients = list(src._clients)
    assert len(clients) == 2
    close = KubeClient.close

    async def close_raising_first(self: KubeClient) -> None:
        await close(self)
        if self is clients[0]:
            raise RuntimeError("connector close failed")

    monkeypatch.setattr(KubeClient, "close", close_raising_first)
    await asyncio.wait_for(src.stop(), 30.0)
    assert [_closed(c) for c in clients] == [True, True]


@pytest.mark.parametrize("backing_off", [False, True], ids=["waiting", "backing-off"])
@pytest.mark.parametrize("steps", [0, 1, 2])
async def test_the_reconcile_loop_woken_as_it_is_cancelled_ends(
    backing_off: bool, steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's wake-up (a pool event, the election's ``wake``) lands in the same turn as the stop's
    cancellation, or one or two turns before it: the loop ends. (Before, on Python 3.11, its
    ``asyncio.wait_for(self._dirty.wait(), ...)`` returned the wake-up and dropped the cancellation:
    the loop went on and the stop waited for it forever; CI hung in
    test_a_gateway_running_the_controller_beside_a_standalone_one_writes_only_once_it_leads.)"""
    from kvgate.k8s.client import KubeError

    if backing_off:  # each pass fails: the loop waits in its back-off, fed by the same wake-ups

        async def refused(self: ImportController) -> None:
            raise KubeError(500, "refused")

        monkeypatch.setattr(ImportController, "reconcile", refused)
    ctl = ImportController(None, [], writes=False)
    await ctl.start()
    try:
        await asyncio.sleep(0.05)  # the first pass done: the loop waits for the next wake-up
        task = ctl._task
        assert task is not None and not task.done()
        ctl.wake()
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=30.0)
        assert done, "the reconcile loop went on after it was cancelled as it was woken"
        assert task.cancelled()
    finally:
        await ctl.stop()
