"""The config watch (``kvgate serve``'s reload loop) ends when cancelled, even as it is woken: a
SIGHUP's ``trigger()`` in the same event-loop turn as the cancellation, or one or two turns before it.
(Before, on Python 3.11, its ``asyncio.wait_for(self._wake.wait(), poll_s)`` returned the wake-up and
dropped the cancellation (CPython gh-86296): the watch went on and a graceful stop waiting for it hung.)"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.conftest import until
from kvgate.config.gateway import GatewayConfig
from kvgate.gateway.reload import ConfigWatch


class _Watch(ConfigWatch):
    def apply(self, new: GatewayConfig, prepared: Any = None) -> str | None:
        return None


@pytest.mark.parametrize("poll_s", [None, 60.0], ids=["sighup-only", "polling"])
@pytest.mark.parametrize("steps", [0, 1, 2])
async def test_the_config_watch_woken_as_it_is_cancelled_ends(
    poll_s: float | None, steps: int, tmp_path: Any
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("pools: []\n")
    watch = _Watch(str(path), poll_s=poll_s, load=lambda _p: cast(GatewayConfig, object()))
    task = asyncio.create_task(watch.run())
    try:
        watch.trigger()
        await until(lambda: watch.reloads >= 1)  # the first reload done: the watch waits for the next wake-up
        assert watch.reloads == 1 and not task.done()
        watch.trigger()
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done, "the config watch went on after it was cancelled as it was woken"
        assert task.cancelled()
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
