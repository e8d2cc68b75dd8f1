"""Review s16-fixes-b (19ac148, ``hub._connect_any``): "every connect ended and every socket closed before
it returns" does not hold when the probe is cancelled again while its ``finally`` awaits
``cancel_all_and_wait``: that await raises the caller's CancelledError (aio: "the caller's own cancel:
raised") and the ``for s in socks: s.close()`` after it never runs; the sockets (up to MAX_TARGETS per
probe) are left to the garbage collector (ResourceWarning). A second cancel is what a hub EPP's stop
gives a probe in flight: ``ClusterDirector.close`` cancels it, and ``asyncio.run``'s end cancels every task
still running again (or ``cancel_and_wait`` re-cancels after STUCK_S). Fails on main (e9e4f20).
Fix: close the sockets in a ``finally`` of their own around the cancel-and-wait."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from kvgate.multicluster.hub import connects

pytestmark = pytest.mark.asyncio


async def test_every_socket_is_closed_when_the_probe_is_cancelled_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    made: list[socket.socket] = []
    real = socket.socket

    class Recorded(real):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            made.append(self)

    async def never(*_a: Any, **_k: Any) -> None:  # (a connect that never completes: a blackholed gateway)
        await asyncio.Event().wait()

    monkeypatch.setattr(socket, "socket", Recorded)
    monkeypatch.setattr(loop, "sock_connect", never)
    probe = loop.create_task(connects("127.0.0.1:9", 5.0))
    await asyncio.sleep(0.05)
    assert made and not probe.done()
    probe.cancel()  # the hub's stop (ClusterDirector.close)
    await asyncio.sleep(0)  # (the probe is now in its finally, awaiting its connects' end)
    probe.cancel()  # asyncio.run's end cancels what still runs
    with pytest.raises(asyncio.CancelledError):
        await probe
    await asyncio.sleep(0.05)
    still_open = [s for s in made if s.fileno() != -1]
    for s in still_open:
        s.close()
    assert not still_open, f"{len(still_open)} probe socket(s) left open after the probe ended"
