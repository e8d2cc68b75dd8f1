"""The hub controller's stop and its leadership follower's stop agree on how long the follower may take
(review s10-hard L5).

The follower, stepping down, is in ``ImportController.stop``, which waits for the members' watches through
further cancels for up to ``imports.WATCHES_STOP_S`` (20 s). ``HubController.stop`` judged the follower
stuck 5 s after its cancel and abandoned it after 15 s ("swallows every cancellation; abandoned, left
running") while it was correctly waiting, and returned with the watches still stopping. It now waits
``FOLLOWER_STOP_S`` (the watches' bound plus ``STUCK_S``) before judging it stuck.

Run on an event loop with a virtual clock (the ``run_virtual`` fixture, tests/conftest.py: its selector
advances the clock to the next timer instead of sleeping), so the real budgets (tens of seconds) take no
wall time and no test depends on the machine's speed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import pytest

from kvgate.k8s.tasks import RECANCELS, STUCK_S
from kvgate.multicluster import imports
from kvgate.multicluster.hub_controller import HubController
from kvgate.multicluster.imports import ImportController


class _SlowWatch:
    """A member's watch whose stop (its stream's close) takes ``stop_s``."""

    def __init__(self, stop_s: float) -> None:
        self.name = "member watch"
        self.stop_s = stop_s
        self.stopped_at: float | None = None

    async def stop(self) -> None:
        await asyncio.sleep(self.stop_s)
        self.stopped_at = asyncio.get_running_loop().time()


class _Elector:
    def leads(self) -> bool:
        return False  # (the follower steps down)

    async def stop(self) -> None:
        pass

    def dead(self) -> str | None:
        return None


async def _stepping_down(watch_stop_s: float) -> tuple[HubController, asyncio.Task[None], _SlowWatch]:
    """A hub controller whose follower is stepping down, inside ``ImportController.stop``, waiting for a
    member watch that takes ``watch_stop_s`` to stop."""
    ctl = ImportController(None, [])
    ctl._task = asyncio.create_task(asyncio.sleep(3600))  # the reconcile loop (ends when cancelled)
    watch = _SlowWatch(watch_stop_s)
    ctl._reflectors = [cast(Any, watch)]
    hc = HubController(cast(Any, None))
    hc.controller = ctl
    hc.elector = cast(Any, _Elector())
    hc._task = asyncio.create_task(hc._follow_leadership())
    hc._changed.set()
    await asyncio.sleep(1.0)  # the follower is in ctl.stop, waiting for the watch
    assert hc.controller is None and watch.stopped_at is None
    follower = hc._task
    return hc, follower, watch


def test_the_budgets_agree() -> None:
    from kvgate.multicluster.hub_controller import FOLLOWER_STOP_S

    assert FOLLOWER_STOP_S > imports.WATCHES_STOP_S


def test_a_follower_waiting_for_its_watches_is_not_abandoned(
    caplog: pytest.LogCaptureFixture, run_virtual: Any
) -> None:
    """The watches take 18 s to stop (within the import controller's 20 s): the hub controller's stop waits
    for them, says nothing of a swallowed cancel, and returns once they stopped. Before: "cancelling it
    again" at 5 s and 10 s, "abandoned, left running" at 15 s, returned before the watches stopped."""
    caplog.set_level(logging.INFO)
    assert imports.WATCHES_STOP_S > 18.0 + 1.0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hc, follower, watch = await _stepping_down(19.0)  # 18 s left when the stop begins
        t0 = loop.time()
        await hc.stop()
        took = loop.time() - t0
        assert watch.stopped_at is not None, "the hub controller's stop returned with the watches stopping"
        assert follower.cancelled()
        assert took == pytest.approx(18.0, abs=0.01)

    run_virtual(main)
    assert "abandoned" not in caplog.text
    assert "swallowed" not in caplog.text


def test_a_follower_that_swallows_every_cancel_is_still_abandoned_within_the_bound(
    caplog: pytest.LogCaptureFixture, run_virtual: Any
) -> None:
    from kvgate.multicluster.hub_controller import FOLLOWER_STOP_S

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hc = HubController(cast(Any, None))
        done = [False]

        async def deaf() -> None:
            while not done[0]:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(3600)

        hc._task = asyncio.create_task(deaf())
        await asyncio.sleep(0)
        t0 = loop.time()
        await hc.stop()
        assert loop.time() - t0 == pytest.approx(FOLLOWER_STOP_S + RECANCELS * STUCK_S, abs=0.01)
        done[0] = True
        hc._task.cancel()
        await asyncio.wait([hc._task])

    run_virtual(main)
    assert "the leadership follower did not end 25.0s after it was cancelled (the cancellation" in caplog.text
    assert f"cancelled {RECANCELS + 1} times (it swallows every cancellation); abandoned" in caplog.text
