"""A cancelled stop still closes everything (session 12, ``kvgate.aio.stop_to_the_end``).

Since session 11 a stop raises its caller's cancellation (``tests/test_stop_cancels.py``); but it raised
it where it landed, while the stop waited for its background task, and skipped the rest of its cleanup:
the gateway's listeners and scrapers, the EPP's health and metrics servers, the scraper's clients and
session, the fetcher's channels and session, the global gateway's router, a Lease not released, a stop's
task left set (a second stop finished them; nothing guaranteed one would come). Now each of these stops
runs to its end in a task of its own that the caller's cancel does not reach, and raises the cancel
after. Each is checked on the real object with the shared ``stop_raises_a_cancel`` fixture
(tests/conftest.py), cancelled while its task winds down and in the turn it ends, and a predicate over
the resources it must have closed (stand-ins that record their close). Every case fails before."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kvgate.aio import cancel_and_wait, stop_to_the_end

WHEN = ["waiting", "as it ends"]
Case = tuple[Callable[[asyncio.Task[Any]], None], Callable[[], Awaitable[Any]], Callable[[], bool]]


class _Closable:
    """A stand-in for a client, channel, session, server, front or runner: records what closed it."""

    def __init__(self) -> None:
        self.closed = False

    def close(self, *_: object) -> None:
        self.closed = True

    async def aclose(self, *_: object) -> None:
        await asyncio.sleep(0)  # (a real close awaits: the stop resumes after it)
        self.closed = True

    close_all = drain = close


class _AsyncClosable(_Closable):
    async def close(self, *_: object) -> None:  # type: ignore[override]
        await self.aclose()

    stop = cleanup = enter_graceful_shutdown = close  # type: ignore[assignment]


def _kv_subscriber() -> Case:
    from kvgate.datalayer.kvindex import BlockIndex
    from kvgate.datalayer.kvsubscriber import KVEventSubscriber

    sub = KVEventSubscriber(BlockIndex(), "10.0.0.1:8000", "tcp://127.0.0.1:1")
    return (lambda t: setattr(sub, "_task", t)), sub.stop, lambda: sub._task is None


def _scraper() -> Case:
    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.datalayer.store import EndpointStore

    scraper = MetricsScraper(EndpointStore())
    client, session = _Closable(), _AsyncClosable()
    scraper._clients["10.0.0.1:8000"] = client  # type: ignore[assignment]
    scraper._session, scraper._own_session = session, True  # type: ignore[assignment]

    def plant(t: asyncio.Task[Any]) -> None:
        scraper._tasks["10.0.0.1:8000"] = t  # type: ignore[assignment]

    return plant, scraper.stop, lambda: client.closed and session.closed and not scraper._clients


def _fetcher() -> Case:
    from kvgate.multicluster.fetcher import Fetcher

    fetcher = Fetcher(lambda: [])
    channel, session = _AsyncClosable(), _AsyncClosable()
    fetcher._channels["10.0.0.1:9003"] = channel  # type: ignore[assignment]
    fetcher._session = session  # type: ignore[assignment]
    return (lambda t: setattr(fetcher, "_task", t)), fetcher.stop, lambda: channel.closed and session.closed


def _global_gateway() -> Case:
    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.serve import GlobalGateway

    gw = GlobalGateway(ClustersConfig((ClusterSpec("c1", epp="127.0.0.1:1"),)), "round-robin", fetch=False)
    router = _AsyncClosable()
    gw.router = router  # type: ignore[assignment]
    return (lambda t: setattr(gw, "_reload_task", t)), gw.stop, lambda: router.closed


def _hub_feed() -> Case:
    from kvgate.multicluster.hub import HubFeed

    feed = HubFeed.__new__(HubFeed)  # (only what its stop uses)
    source, fetcher = _AsyncClosable(), _AsyncClosable()
    feed.source, feed.fetcher = source, fetcher  # type: ignore[assignment]
    return (lambda t: setattr(feed, "_task", t)), feed.stop, lambda: source.closed and fetcher.closed


def _gateway() -> Case:
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway.server import GatewayServer

    cfg = parse_gateway_config({"pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}]})
    gw = GatewayServer(cfg, [], scrape=False)
    scraper, server, front = _AsyncClosable(), _Closable(), _Closable()
    gw._scrapers.append(scraper)  # type: ignore[arg-type]
    gw._servers.append((server, front))  # type: ignore[arg-type]
    return gw._tasks.append, gw.stop, lambda: scraper.closed and server.closed and front.closed


def _epp() -> Case:
    from kvgate.extproc.server import EppServer

    epp = EppServer.__new__(EppServer)  # (only what its stop uses)
    health_server, runner = _AsyncClosable(), _AsyncClosable()
    epp.options = type("O", (), {"grace_s": 0.0})()  # type: ignore[assignment]
    epp._health, epp._grpc = _AsyncClosable(), None  # type: ignore[assignment]
    epp._health_server, epp._metrics_runner = health_server, runner  # type: ignore[assignment]
    return (lambda t: setattr(epp, "_sweeper", t)), epp.stop, lambda: health_server.closed and runner.closed


def _lease() -> Case:
    from kvgate.k8s.lease import LeaderElector

    elector = LeaderElector(None, name="l", namespace="ns", identity="me")  # type: ignore[arg-type]
    released: list[bool] = []

    async def release() -> None:
        await asyncio.sleep(0)
        released.append(True)

    elector._release = release  # type: ignore[method-assign]

    def plant(t: asyncio.Task[Any]) -> None:
        elector._task = t
        elector.is_leader = True

    return plant, elector.stop, lambda: released == [True] and not elector.is_leader


def _reflector() -> Case:
    from kvgate.k8s import resources as R
    from kvgate.k8s.reflector import Reflector

    r = Reflector(None, R.POD, namespace="ns")  # type: ignore[arg-type]
    return (lambda t: setattr(r, "_task", t)), r.stop, lambda: r._task is None


def _bench_clients() -> Case:
    from kvgate.bench.sim_capacity import Clients

    clients = Clients([], [], 1)
    return clients._tasks.append, clients.stop, lambda: not clients._tasks


CASES = {
    "datalayer KVEventSubscriber.stop": _kv_subscriber,
    "datalayer MetricsScraper.stop": _scraper,
    "multicluster Fetcher.stop": _fetcher,
    "multicluster GlobalGateway.stop": _global_gateway,
    "multicluster HubFeed.stop": _hub_feed,
    "gateway GatewayServer.stop": _gateway,
    "extproc EppServer.stop": _epp,
    "k8s LeaderElector.stop (the Lease released)": _lease,
    "k8s Reflector.stop": _reflector,
    "bench sim_capacity Clients.stop": _bench_clients,
}


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("case", list(CASES))
async def test_a_cancelled_stop_still_closes_everything(
    stop_raises_a_cancel: Any, case: str, when: str
) -> None:
    plant, stop, closed = CASES[case]()
    await stop_raises_a_cancel(plant, stop, when, closed)


# --- stop_to_the_end itself ---------------------------------------------------------------------------

log = logging.getLogger("test")


async def test_without_a_cancel_it_is_the_stop_itself() -> None:
    async def ok() -> int:
        await asyncio.sleep(0)
        return 7

    async def fails() -> None:
        raise ValueError("boom")

    assert await stop_to_the_end(ok(), "ok", log) == 7
    with pytest.raises(ValueError, match="boom"):
        await stop_to_the_end(fails(), "fails", log)


async def test_further_cancels_do_not_cut_the_stop() -> None:
    steps: list[int] = []
    gate = asyncio.Event()

    async def cleanup() -> None:
        for i in range(3):
            await gate.wait()
            steps.append(i)

    stopper = asyncio.create_task(stop_to_the_end(cleanup(), "cleanup", log))
    for _ in range(3):
        await asyncio.sleep(0)
        stopper.cancel()
    await asyncio.sleep(0)
    assert not stopper.done()
    gate.set()
    await asyncio.wait([stopper], timeout=10)
    assert steps == [0, 1, 2]
    assert stopper.cancelled()


async def test_a_stop_still_running_past_the_limit_is_left_and_said(caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()
    finished: list[bool] = []

    async def cleanup() -> None:
        await gate.wait()
        finished.append(True)

    stopper = asyncio.create_task(stop_to_the_end(cleanup(), "the slow stop", log, limit_s=0.05))
    await asyncio.sleep(0)
    stopper.cancel()
    await asyncio.wait([stopper], timeout=10)
    assert stopper.cancelled()
    assert "the slow stop still running" in caplog.text
    gate.set()  # (left to finish on its own, kept referenced)
    for _ in range(5):
        await asyncio.sleep(0)
    assert finished == [True]


async def test_an_error_after_a_cancel_is_logged_and_the_cancel_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()

    async def cleanup() -> None:
        await gate.wait()
        raise ValueError("boom")

    stopper = asyncio.create_task(stop_to_the_end(cleanup(), "the failing stop", log))
    await asyncio.sleep(0)
    stopper.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait([stopper], timeout=10)
    assert stopper.cancelled()
    assert "the failing stop failed" in caplog.text


async def test_cancel_and_wait_waits_for_a_task_finishing_a_stop_without_calling_it_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s12-hard L5: a task cancelled while it awaits a ``stop_to_the_end`` stop (the hub
    controller's ``run`` while a reload restarts it) runs on until that stop ended, bounded by the stop's
    limit. ``cancel_and_wait`` took that for a swallowed cancel: it logged ERRORs, re-cancelled it, and
    abandoned it left running (fails before). Now it waits for it, up to that stop's limit, and says
    nothing."""
    gate = asyncio.Event()
    stopped: list[bool] = []

    async def cleanup() -> None:
        await gate.wait()
        stopped.append(True)

    async def run() -> None:
        await stop_to_the_end(cleanup(), "the old stop", log, limit_s=30)

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.5, gate.set)  # (the stop ends well after 3 x stuck_s)
    with caplog.at_level(logging.ERROR):
        await cancel_and_wait(task, "the controller", log, stuck_s=0.05)
    assert task.done() and task.cancelled()
    assert stopped == [True]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_second_cancel_does_not_cut_the_hub_controllers_lease_release() -> None:
    """``HubController.stop`` ran each step in a ``finally`` of the one before, which a first cancel does
    not skip; a second one, landing while the Lease was being released, cut the release (a standby then
    waited for the Lease to expire). Now the stop runs to its end through both, then raises."""
    from kvgate.multicluster.hub_controller import HubController

    follower_ends, release_ends = asyncio.Event(), asyncio.Event()
    released: list[bool] = []

    async def follower() -> None:  # (winds down until told, once cancelled)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await follower_ends.wait()
            raise

    class _Elector:
        async def stop(self) -> None:
            await release_ends.wait()
            released.append(True)

    hc = HubController.__new__(HubController)  # (only what its stop uses)
    hc._task, hc.controller, hc.elector = asyncio.create_task(follower()), None, _Elector()  # type: ignore[assignment]
    hub = _AsyncClosable()
    hc._hub, hc._members = hub, []  # type: ignore[assignment]
    stopper = asyncio.create_task(hc.stop())
    for _ in range(5):
        await asyncio.sleep(0)
    stopper.cancel()  # the first: while the follower winds down
    for _ in range(5):
        await asyncio.sleep(0)
    follower_ends.set()
    for _ in range(10):
        await asyncio.sleep(0)
    stopper.cancel()  # the second: while the Lease is released
    for _ in range(5):
        await asyncio.sleep(0)
    release_ends.set()
    await asyncio.wait([stopper], timeout=10)
    assert stopper.cancelled()
    assert released == [True], "a second cancel cut the Lease's release"
    assert hub.closed


# --- session 13: a KeyboardInterrupt or SystemExit inside a stop --------------------------------------------


@pytest.mark.parametrize("cancelled", [True, False], ids=["after a cancel", "no cancel"])
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_inside_a_stop_is_raised_as_itself_and_not_logged(
    interrupt: type[BaseException], cancelled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A second Ctrl-C under ``asyncio.run`` raises ``KeyboardInterrupt`` in the stop the first one's
    cancel is running (a ``SystemExit`` alike). Before: the stop's task raised it out of the event loop,
    the caller got a ``CancelledError`` and an ERROR "failed: KeyboardInterrupt()" was logged. Now the
    caller gets the interrupt itself, nothing is logged, the stop's ``finally`` ran, and ``asyncio.run``'s
    own end still cancels and finishes the other tasks (the interrupt leaves the loop once). Own event
    loop: the interrupt leaves it."""
    closed: list[str] = []
    got: list[BaseException] = []
    tasks: list[asyncio.Task[Any]] = []

    async def cleanup() -> None:
        try:
            await asyncio.sleep(0.01)
            raise interrupt
        finally:
            await asyncio.sleep(0)  # (a close that awaits)
            closed.append("stop")

    async def caller() -> None:
        try:
            await stop_to_the_end(cleanup(), "the interrupted stop", log)
        except BaseException as exc:
            got.append(exc)
            raise

    async def other() -> None:  # (another task, cancelled by asyncio.run's end)
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            closed.append("other")

    async def main() -> None:
        tasks.append(asyncio.create_task(other()))
        tasks.append(stopper := asyncio.create_task(caller()))
        if cancelled:
            await asyncio.sleep(0)
            stopper.cancel()
        await asyncio.wait([stopper])

    with caplog.at_level(logging.ERROR), pytest.raises(interrupt):
        asyncio.run(main())
    assert type(tasks[1].exception()) is interrupt  # (retrieved: no "never retrieved" at its collection)
    assert [type(e) for e in got] == [interrupt], got
    assert closed == ["stop", "other"] or closed == ["other", "stop"], closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    from kvgate import aio

    assert tasks[1] not in aio._FINISHING
