"""Review s14-final L3 (932fa95, fixstops14 I1): ``GlobalRouter._close`` closed the HTTP session in an
``except Exception`` branch and after the try, no longer in a ``finally``: an interrupt or cancellation
raised in the EPP channels' close (a second Ctrl-C landing in the stop; asyncio.run's end cancelling a
stop left past its limit) skipped the session's close. Both parameters fail before."""

from __future__ import annotations

import asyncio

import pytest

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.router import GlobalRouter


@pytest.mark.parametrize("exc", [KeyboardInterrupt, asyncio.CancelledError])
async def test_the_session_closes_when_the_channels_close_is_interrupted(exc: type[BaseException]) -> None:
    router = GlobalRouter(ClustersConfig((ClusterSpec("c1", epp="127.0.0.1:1"),)), "round-robin")
    await router.start()
    session = router._session
    assert session is not None

    async def epp_close() -> None:
        raise exc()

    router.epp.close = epp_close  # type: ignore[method-assign]
    try:
        with pytest.raises(exc):
            await router._close()
        assert session.closed, "the HTTP session was left open"
    finally:
        if not session.closed:
            await session.close()
