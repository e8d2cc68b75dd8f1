"""The import controller's stop stops every member's watch, each to the end of its close, even when it is
cancelled again while they stop (review s9-dl D3's narrow case); a reflector's stop never swallows its
caller's cancellation.

The hub controller's leadership follower, cancelled while it steps down (inside ``ImportController.stop``),
runs that stop's ``finally`` (the members' watches) under the first cancel; ``cancel_and_wait`` cancels
the follower again when it is still running ``stuck_s`` later. Before, that second cancel went into the
reflector whose stop was being awaited and cut its watch's own close; ``Reflector.stop`` then swallowed it
(it awaited its task inside ``suppress(CancelledError)``, losing whatever cancel its caller got meanwhile),
which alone kept the remaining watches from being left running as the review foresaw. Real ``Reflector``
objects whose watch takes a while to close once cancelled; no API server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import pytest

from kvgate.k8s import resources as R
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.tasks import cancel_and_wait
from kvgate.multicluster import imports
from kvgate.multicluster.imports import ImportController

log = logging.getLogger("test_import_stop_recancel")


async def _slow_to_end(wind_down_s: float, ended: list[str], name: str) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(wind_down_s)  # (a watch closing its stream)
        ended.append(name)
        raise


def _reflector(wind_down_s: float, ended: list[str], name: str) -> Reflector:
    r = Reflector(cast(KubeClient, None), R.INFERENCE_POOL, namespace=name)
    r._task = asyncio.create_task(_slow_to_end(wind_down_s, ended, name))
    return r


async def test_a_stop_cancelled_again_while_the_watches_stop_still_stops_them_all() -> None:
    ended: list[str] = []
    ctl = ImportController(None, [])
    ctl._task = asyncio.create_task(_slow_to_end(0.05, ended, "loop"))  # the reconcile loop
    ctl._reflectors = [_reflector(0.3, ended, f"member-{i}") for i in range(3)]
    await asyncio.sleep(0)

    async def step_down() -> None:  # the follower: HubController._follow_leadership's _stop_quietly
        await ctl.stop()

    follower = asyncio.create_task(step_down())
    await asyncio.sleep(0.01)  # inside ctl.stop, waiting for the reconcile loop
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.timeout(10):
        await cancel_and_wait(follower, "the follower", log, stuck_s=0.1)  # re-cancels at 0.1 s, 0.2 s
        await asyncio.wait([follower])  # (abandoned by the stop at 0.3 s if still running: it goes on)
    assert follower.cancelled()
    assert sorted(ended) == ["loop", "member-0", "member-1", "member-2"], "a watch's close was cut"
    assert all(r._task is None for r in ctl._reflectors)
    assert loop.time() - t0 < 5.0


async def test_a_reflector_stop_raises_its_callers_cancellation() -> None:
    """Cancelled while its watch winds down, ``Reflector.stop`` raises the cancellation (after the watch
    ended). Before, it returned: the caller went on as if it had not been cancelled."""
    ended: list[str] = []
    r = _reflector(0.3, ended, "member")
    await asyncio.sleep(0)
    stopper = asyncio.create_task(r.stop())
    await asyncio.sleep(0.05)
    stopper.cancel()
    await asyncio.wait([stopper], timeout=30)
    assert stopper.cancelled(), "the caller's cancellation was swallowed"
    await asyncio.sleep(0.5)
    assert ended == ["member"]


async def test_the_watches_stop_is_waited_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A watch that swallows every cancel: the stop gives up after ``WATCHES_STOP_S`` (logged), it does
    not wait for it forever."""
    monkeypatch.setattr(imports, "WATCHES_STOP_S", 0.3)
    done = [False]

    async def deaf() -> None:
        while not done[0]:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)

    r = Reflector(cast(KubeClient, None), R.INFERENCE_POOL)
    r._task = asyncio.create_task(deaf())
    ctl = ImportController(None, [])
    ctl._reflectors = [r]
    await asyncio.sleep(0)
    try:
        async with asyncio.timeout(5):
            await ctl.stop()
        assert "stopping the members' watches still running 0.3s" in caplog.text
    finally:
        done[0] = True  # (the test's own cleanup)
        task: Any = r._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=30)
