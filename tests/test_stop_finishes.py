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
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kvgate.aio import STOP_LIMIT_S, cancel_and_wait, stop_to_the_end

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

    # (its drain given: the file's, read at the stop since 18bef560, is the router's: a stand-in here)
    gw = GlobalGateway(ClustersConfig((ClusterSpec("c1", epp="127.0.0.1:1"),)), "round-robin", fetch=False,
                       drain_s=0.0)  # fmt: skip
    router = _AsyncClosable()
    gw.router = router  # type: ignore[assignment]
    return (lambda t: setattr(gw, "_reload_task", t)), gw.stop, lambda: router.closed


def _hub_feed() -> Case:
    from kvgate.multicluster.hub import HubFeed

    feed = HubFeed.__new__(HubFeed)  # (only what its stop uses)
    source, fetcher = _AsyncClosable(), _AsyncClosable()
    feed.source, feed.fetcher = source, fetcher  # type: ignore[assignment]
    feed._names_task = None  # (hub33: its gateway-name lookups, none started here)
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


class _Health:
    """The EPP's gRPC health servicer: its stop sets the statuses first (``begin_drain``)."""

    async def set(self, *_: object) -> None:
        await asyncio.sleep(0)


def _epp() -> Case:
    from kvgate.extproc.server import EppServer

    epp = EppServer.__new__(EppServer)  # (only what its stop uses)
    health_server, runner = _AsyncClosable(), _AsyncClosable()
    epp.options = type("O", (), {"grace_s": 0.0})()  # type: ignore[assignment]
    epp._health, epp._grpc = _Health(), None  # type: ignore[assignment]
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


async def test_on_cancel_is_called_once_at_the_first_cancel_and_not_without_one() -> None:
    """``on_cancel``: the stop's hurry hook (``Proc.stop`` sends SIGKILL at once): called at the caller's
    first cancel only, never when no cancel came."""
    calls: list[int] = []
    gate = asyncio.Event()

    async def cleanup() -> None:
        await gate.wait()

    await stop_to_the_end(asyncio.sleep(0), "quiet", log, on_cancel=lambda: calls.append(0))
    assert calls == []
    stop = stop_to_the_end(cleanup(), "cleanup", log, on_cancel=lambda: calls.append(1))
    stopper = asyncio.create_task(stop)
    for _ in range(3):
        await asyncio.sleep(0)
        stopper.cancel()
    await asyncio.sleep(0)
    assert calls == [1]
    gate.set()
    await asyncio.wait([stopper], timeout=10)
    assert stopper.cancelled()
    assert calls == [1]


async def test_an_on_cancel_hook_that_raises_is_logged_and_the_cancellation_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``on_cancel`` raising: logged; the caller still gets its cancellation, once the stop ended (not the
    hook's error, with the stop left running untracked; review s15-hard I1)."""
    gate = asyncio.Event()
    finished: list[bool] = []

    async def cleanup() -> None:
        await gate.wait()
        finished.append(True)

    def boom() -> None:
        raise RuntimeError("boom")

    stopper = asyncio.create_task(stop_to_the_end(cleanup(), "the hooked stop", log, on_cancel=boom))
    await asyncio.sleep(0)
    stopper.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not stopper.done(), "returned before its stop ended"
    gate.set()
    await asyncio.wait([stopper], timeout=10)
    assert stopper.cancelled(), f"the caller's cancellation was replaced: {stopper.exception()!r}"
    assert finished == [True]
    assert "the hooked stop: its on_cancel hook failed" in caplog.text
    assert "RuntimeError: boom" in caplog.text


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


# --- session 13: the stops that ran their cleanup in a ``finally`` ----------------------------------------
# The delay relay's close, the simulator's KV-event publisher's close, ``Replica.stop`` / ``close`` and
# ``SimFleet.close`` raised a cancel where it landed: the rest ran in a ``finally`` (a second cancel cut
# it where it awaited), or not at all (``Replica.close``'s runner and KV-event sockets, the fleet's
# replicas), and what they stopped still wound down after they raised. Each is cancelled (twice) after
# 1, 2, ... loop turns, on real objects (ports, sockets, tasks); what must be released is checked in
# the turn the stop ended (a done callback), before anything else could finish it.


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _cancelled_at_each_turn(
    make: Callable[[], Awaitable[Any]],
    stop: Callable[[Any], Awaitable[Any]],
    left: Callable[[Any], list[str]],
    cleanup: Callable[[Any], Awaitable[Any]] | None = None,
) -> int:
    """For n = 1, 2, ...: a fresh object (``make``), its ``stop`` cancelled after n loop turns (a task
    cancelled before its first turn never runs: not a stop cancelled mid-way) and once more a turn
    later; ``left(obj)`` (what is still held) must be empty in the turn the stop ended, and the stop
    must raise the cancel. Ends at the first n at which the stop ended before its cancel; the
    number of cancelled runs."""
    for n in range(1, 200):
        obj = await make()
        try:
            stopper = asyncio.create_task(stop(obj))
            seen: list[list[str]] = []
            stopper.add_done_callback(lambda _, o=obj, seen=seen: seen.append(left(o)))  # type: ignore[misc]
            for _ in range(n):
                await asyncio.sleep(0)
            if stopper.done():
                await asyncio.wait([stopper])  # (its done callbacks ran: ours first)
                assert seen == [[]], f"not cancelled: {seen}"
                return n - 1
            stopper.cancel()
            await asyncio.sleep(0)
            stopper.cancel()
            # (a cancelled stop is allowed STOP_LIMIT_S: under load ~10 one took over 20 s; review
            # s27-rev-fixes27c F5)
            await asyncio.wait([stopper], timeout=STOP_LIMIT_S + 10)
            assert stopper.done() and stopper.cancelled(), f"cancelled after {n} turns: {stopper!r}"
            assert seen == [[]], f"cancelled after {n} turns, the stop ended with {seen[0]} left"
        finally:
            if cleanup is not None:
                await cleanup(obj)
    raise AssertionError("the stop never ended on its own")


async def test_a_cancelled_delay_relay_close_ends_its_connections_first() -> None:
    """A relay with a live relayed connection (both sockets open): its close, cancelled at any turn,
    leaves no port listening, no connection task running, the client's socket closed by the relay."""
    from kvgate.bench.delay_relay import DelayRelay, Route

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:  # (the target: echoes)
        while data := await r.read(100):
            w.write(data)
        w.close()

    target = await asyncio.start_server(hold, "127.0.0.1", 0)
    tport = target.sockets[0].getsockname()[1]
    clients: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter, list[asyncio.Task[None]]]] = {}

    async def make() -> DelayRelay:
        relay = DelayRelay(Route("127.0.0.1", 0, "127.0.0.1", tport, 0.0), handshake=False)
        await relay.start()
        r, w = await asyncio.open_connection("127.0.0.1", relay.port)
        w.write(b"x")
        async with asyncio.timeout(10):
            assert await r.readexactly(1) == b"x"  # (relayed both ways: both sockets and pumps up)
        clients[id(relay)] = (r, w, list(relay._tasks))
        return relay

    def left(relay: DelayRelay) -> list[str]:
        out = []
        if _listening(relay.port):
            out.append("its port listening")
        if [t for t in clients[id(relay)][2] if not t.done()] or relay._tasks:
            out.append("a connection task running")
        return out

    async def cleanup(relay: DelayRelay) -> None:
        r, w, _ = clients.pop(id(relay))
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionError):
                assert await r.read() == b""  # (the relay closed its side)
        w.close()
        await relay.close()

    try:
        assert await _cancelled_at_each_turn(make, lambda relay: relay.close(), left, cleanup) > 1
    finally:
        target.close()


async def test_a_cancelled_kv_publisher_close_ends_its_replay_task_and_closes_its_sockets() -> None:
    from kvgate.sim.kvevents import KVEventPublisher

    tasks: dict[int, asyncio.Task[None]] = {}

    async def make() -> KVEventPublisher:
        pub = KVEventPublisher()
        pub.start()
        await asyncio.sleep(0)
        assert pub._task is not None
        tasks[id(pub)] = pub._task
        return pub

    def left(pub: KVEventPublisher) -> list[str]:
        out = [] if tasks[id(pub)].done() and pub._task is None else ["the replay task"]
        assert pub._router is not None
        return out + [name for name, s in (("PUB", pub._pub), ("ROUTER", pub._router)) if not s.closed]

    assert await _cancelled_at_each_turn(make, lambda pub: pub.close(), left) >= 1


def _replica_left(replica: Any, port: int, driver: asyncio.Task[Any] | None) -> list[str]:
    out = []
    if _listening(port):
        out.append("its port listening")
    if driver is not None and not driver.done():
        out.append("its engine driver running")
    return out


async def test_a_cancelled_replica_stop_or_close_releases_everything() -> None:
    """``Replica.stop``: its port closed, its driver ended. ``Replica.close``: also its runner cleaned up
    and both KV-event sockets closed (a cancel had skipped both)."""
    from kvgate.sim.server import Replica, ReplicaConfig

    state: dict[int, tuple[int, asyncio.Task[Any] | None, Any]] = {}

    async def make() -> Replica:
        replica = Replica(ReplicaConfig(profile="tiny", kv_events_port=0))
        await replica.start()
        state[id(replica)] = (replica.port, replica._driver, replica.kv)
        return replica

    def stopped(replica: Replica) -> list[str]:
        port, driver, _ = state[id(replica)]
        return _replica_left(replica, port, driver)

    def closed(replica: Replica) -> list[str]:
        out = stopped(replica)
        if replica._runner is not None:
            out.append("its runner")
        kv = state[id(replica)][2]
        if replica.kv is not None or kv._pub.closed is False or kv._router.closed is False:
            out.append("its KV-event sockets")
        return out

    async def close(replica: Replica) -> None:
        async with asyncio.timeout(20):
            await replica.close()

    assert await _cancelled_at_each_turn(make, lambda r: r.stop(), stopped, close) >= 1
    assert await _cancelled_at_each_turn(make, lambda r: r.close(), closed, close) >= 1


async def test_a_cancelled_fleet_close_closes_every_replica() -> None:
    from kvgate.sim.fleet import SimFleet

    state: dict[int, list[tuple[int, asyncio.Task[Any] | None]]] = {}

    async def make() -> SimFleet:
        fleet = SimFleet(2, profile="tiny", kv_events_port=0, control_port=0)
        await fleet.start()
        state[id(fleet)] = [(r.port, r._driver) for r in fleet.replicas]
        return fleet

    def left(fleet: SimFleet) -> list[str]:
        out = [f"replica {i}: {what}" for i, (r, (port, driver)) in enumerate(zip(fleet.replicas,
               state[id(fleet)], strict=True)) for what in _replica_left(r, port, driver)]  # fmt: skip
        out += [f"replica {i}: its runner or KV sockets" for i, r in enumerate(fleet.replicas)
                if r._runner is not None or r.kv is not None]  # fmt: skip
        if fleet._control is not None:
            out.append("its control port")
        return out

    assert await _cancelled_at_each_turn(make, lambda f: f.close(), left) >= 1


def test_an_interrupt_in_a_stop_its_caller_left_running_is_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    """A stop left running past its limit (its caller gone) that then meets a ``KeyboardInterrupt``
    raises it out of the event loop as any task would: handed over to no one, it would be lost."""
    gate: list[asyncio.Event] = []
    inner: list[asyncio.Task[Any]] = []

    async def cleanup() -> None:
        await gate[0].wait()
        raise KeyboardInterrupt

    async def main() -> None:
        gate.append(asyncio.Event())
        stopper = asyncio.create_task(stop_to_the_end(cleanup(), "the slow stop", log, limit_s=0.01))
        await asyncio.sleep(0)
        stopper.cancel()
        await asyncio.wait([stopper])
        assert stopper.cancelled()  # (its caller left it running)
        inner.extend(t for t in asyncio.all_tasks() if t.get_name() == "the slow stop")
        gate[0].set()
        await asyncio.sleep(1)

    with caplog.at_level(logging.ERROR), pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert "the slow stop still running" in caplog.text
    # (retrieved: a task collected with its error unretrieved logs its traceback, and Python 3.11's
    # traceback calls ast.parse, wherever the collection happens: inside another ast.parse it fails)
    assert [type(t.exception()) for t in inner] == [KeyboardInterrupt]


# --- small13: an interrupt that a task waited for by ``cancel_and_wait`` / ``finish_shielded`` ended on ---


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_cancel_and_wait_does_not_log_an_interrupt_the_task_ended_on(
    interrupt: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """A background task ends on ``KeyboardInterrupt`` (it leaves the loop); ``asyncio.run``'s end
    cancels the others, whose stop (a ``finally``) stops that task with ``cancel_and_wait``. Before: an
    ERROR "had stopped: KeyboardInterrupt()" with its traceback. Now nothing is logged: the interrupt
    already propagated as itself (out of the loop as the task ended; ``asyncio.run`` raises it), and the
    stop ends on its cancel, not raising it again (that would leave the loop a second time, cutting
    ``asyncio.run``'s cancellation of the other tasks). Own event loop: the interrupt leaves it."""
    got: list[BaseException] = []
    tasks: list[asyncio.Task[Any]] = []

    async def background() -> None:
        await asyncio.sleep(0.01)
        raise interrupt

    async def stopper() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            try:
                await cancel_and_wait(tasks[0], "the interrupted task", log)
            except BaseException as exc:  # (none: it returns)
                got.append(exc)
                raise

    async def main() -> None:
        tasks.append(asyncio.create_task(background()))
        tasks.append(asyncio.create_task(stopper()))
        await asyncio.wait([tasks[1]])

    with caplog.at_level(logging.ERROR), pytest.raises(interrupt):
        asyncio.run(main())
    # (retrieved: a task collected with its error unretrieved logs its traceback, and Python 3.11's
    # traceback calls ast.parse, wherever the collection happens: inside another ast.parse it fails)
    assert type(tasks[0].exception()) is interrupt and tasks[1].cancelled()
    assert got == []  # (it returned; the stop's own cancel went on)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("cancelled", [True, False], ids=["after a cancel", "no cancel"])
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_finish_shielded_does_not_log_an_interrupt_the_cleanup_ended_on(
    interrupt: type[BaseException], cancelled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleanup waited for with ``finish_shielded`` ends on ``KeyboardInterrupt`` (it leaves the loop;
    ``asyncio.run``'s end cancels the waiter). Before: an ERROR "failed: KeyboardInterrupt()" with its
    traceback. Now nothing is logged (the interrupt already propagated as itself), the cancel raised."""
    from kvgate.aio import finish_shielded

    got: list[BaseException] = []
    tasks: list[asyncio.Task[Any]] = []

    async def cleanup() -> None:
        await asyncio.sleep(0.01)
        raise interrupt

    async def waiter() -> None:
        try:
            await finish_shielded(tasks[0], "the interrupted cleanup", log, 5.0)
        except BaseException as exc:
            got.append(exc)
            raise

    async def main() -> None:
        tasks.append(asyncio.create_task(cleanup()))
        tasks.append(w := asyncio.create_task(waiter()))
        if cancelled:
            await asyncio.sleep(0)
            w.cancel()
        await asyncio.wait([w])

    with caplog.at_level(logging.ERROR), pytest.raises(interrupt):
        asyncio.run(main())
    assert type(tasks[0].exception()) is interrupt and tasks[1].cancelled()  # (retrieved, as above)
    assert [type(e) for e in got] == [asyncio.CancelledError], got
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# --- session 14: the k8s pool and its discovery, the global router, a live cluster's processes ----------


async def _until(cond: Callable[[], object], within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        while not cond():  # noqa: ASYNC110 (polled: real watches and a real Lease)
            await asyncio.sleep(0.01)


@pytest.mark.timeout(600)  # (many cancelled stops; ~22 s at load ~10, each bounded by STOP_LIMIT_S)
async def test_a_cancelled_kube_pool_stop_releases_the_lease_and_stops_the_watches_and_the_client() -> None:
    """``KubePool.stop`` (a front door's ``--pool-name``) against the API-server double, leader election
    on: cancelled at any turn, it ends with the election loop and every watch ended, the Lease given up
    and the client's HTTP session closed (fails before: a cancel landing in the elector's stop skipped
    the discovery's and the client's)."""
    from kvgate.datalayer.store import EndpointStore
    from kvgate.k8s import resources as R
    from kvgate.k8s.apiserver import ApiServerDouble
    from kvgate.k8s.runtime import KubeOptions, KubePool

    async with ApiServerDouble(bookmark_interval=0.2) as double:
        held: dict[int, tuple[list[asyncio.Task[Any]], str]] = {}

        async def make() -> KubePool:
            opts = KubeOptions("llm", server=double.url, leader_election=True, lease_name="l")
            kp = KubePool(opts, EndpointStore())
            await kp.start()
            assert kp.discovery is not None and kp.elector is not None
            await kp.discovery.wait_synced()
            elector = kp.elector
            await _until(lambda: elector.is_leader)
            tasks = [t for r in kp.discovery.reflectors if (t := r._task) is not None]
            assert len(tasks) == len(kp.discovery.reflectors) and elector._task is not None
            held[id(kp)] = ([*tasks, elector._task], elector.identity)
            return kp

        def left(kp: KubePool) -> list[str]:
            tasks, identity = held[id(kp)]
            out = [t.get_name() for t in tasks if not t.done()]
            if double.get(R.LEASE, "l")["spec"].get("holderIdentity") == identity:
                out.append("the Lease held")
            assert kp.client is not None
            if not kp.client.api.rest_client.pool_manager.closed:
                out.append("the client's session open")
            return out

        async def cleanup(kp: KubePool) -> None:
            async with asyncio.timeout(STOP_LIMIT_S + 10):
                await kp.stop()

        assert await _cancelled_at_each_turn(make, lambda kp: kp.stop(), left, cleanup) >= 1


async def test_a_cancelled_pool_discovery_stop_ends_every_watch_first() -> None:
    """``PoolDiscovery.stop``: its reflectors' stops ran in a ``gather``, which, cancelled, raised as the
    first of them ended while the others' watches still stopped (fails before). Now every watch has
    ended when the cancel is raised."""
    from kvgate.datalayer.store import EndpointStore
    from kvgate.k8s.apiserver import ApiServerDouble
    from kvgate.k8s.client import KubeClient
    from kvgate.k8s.discovery import PoolDiscovery

    async with ApiServerDouble(bookmark_interval=0.2) as double:
        client = await KubeClient.connect(server=double.url)
        tasks: dict[int, list[asyncio.Task[Any]]] = {}

        async def make() -> PoolDiscovery:
            d = PoolDiscovery(client, EndpointStore(), pool_name="llm")
            d.start()
            await d.wait_synced()
            tasks[id(d)] = [t for r in d.reflectors if (t := r._task) is not None]
            assert len(tasks[id(d)]) == len(d.reflectors)
            return d

        def left(d: PoolDiscovery) -> list[str]:
            return [t.get_name() for t in tasks[id(d)] if not t.done()]

        try:
            assert await _cancelled_at_each_turn(make, lambda d: d.stop(), left, lambda d: d.stop()) >= 1
        finally:
            await client.close()


async def test_a_cancelled_global_router_close_closes_its_epp_channels_and_its_session() -> None:
    """``GlobalRouter.close`` with a connected EPP channel (a real gRPC server) and its HTTP session:
    cancelled at any turn, the channel's close has ended and the session is closed (fails before: the
    cancel cut the channel's close and skipped the session's)."""
    import grpc

    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.router import GlobalRouter

    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    channels: dict[int, list[Any]] = {}

    async def make() -> GlobalRouter:
        router = GlobalRouter(ClustersConfig((ClusterSpec("c1", epp=address),)), "round-robin")
        await router.start()
        ch = router.epp._channel(address, None)
        async with asyncio.timeout(10):
            await ch.channel.channel_ready()
        channels[id(router)] = [ch.channel]
        return router

    def left(router: GlobalRouter) -> list[str]:
        out = []
        if router.epp._closing or any(not c._channel.closed() for c in channels[id(router)]):
            out.append("an EPP channel open")
        if router._session is None or not router._session.closed:
            out.append("the HTTP session open")
        return out

    try:
        assert await _cancelled_at_each_turn(make, lambda r: r.close(), left, lambda r: r.close()) >= 1
    finally:
        await server.stop(None)


async def test_a_cancelled_live_cluster_stop_stops_every_process() -> None:
    """``LiveCluster.stop`` (``kvgate bench multicluster --live``: a cluster's simulator, EPP and
    gateway): cancelled at any turn, none of its processes runs on (fails before: the cancel stopped
    the process it landed in, SIGKILL, and left the others running) and their output readers ended."""
    from kvgate.bench import procs
    from kvgate.bench.multicluster_live import LiveCluster, LiveClusterDef

    started: dict[int, list[procs.Proc]] = {}

    async def make() -> LiveCluster:
        cluster = LiveCluster.__new__(LiveCluster)  # (only what its stop uses: no network namespace)
        cluster.d = LiveClusterDef("c1", "tiny", 1, 1.0, "H100")
        cluster.procs = {}
        for name in ("sim", "epp", "gateway"):
            cluster.procs[name], _ = await procs.start(name, ["sleep", "60"], None)
        started[id(cluster)] = list(cluster.procs.values())
        return cluster

    def left(cluster: LiveCluster) -> list[str]:
        out = []
        for p in started[id(cluster)]:
            if p._running():
                out.append(f"{p.name} running")
            if p._reader is not None and not p._reader.done():
                out.append(f"{p.name}'s output reader")
        return out

    # (its stop waits on timers, 50 ms polls: cancelled after a first turn, then at points in time, until
    # it ended before its cancel)
    cancelled = 0
    for n, after_s in enumerate((0.0, 0.0, 0.03, 0.06, 0.1, 0.15, 0.25, 0.5, 1.0)):
        cluster = await make()
        try:
            stopper = asyncio.create_task(cluster.stop())
            seen: list[list[str]] = []
            stopper.add_done_callback(lambda _, c=cluster, seen=seen: seen.append(left(c)))  # type: ignore[misc]
            await asyncio.sleep(0)
            if n:
                await asyncio.sleep(after_s)
            if stopper.done():
                break
            stopper.cancel()
            await asyncio.sleep(0)
            stopper.cancel()
            await asyncio.wait([stopper], timeout=30)
            assert stopper.done() and stopper.cancelled(), f"cancelled after {after_s} s: {stopper!r}"
            assert seen == [[]], f"cancelled after {after_s} s, the stop ended with {seen[0]} left"
            cancelled += 1
        finally:
            for p in started.pop(id(cluster)):
                await p.stop()
    else:
        raise AssertionError("the stop never ended before its cancel")
    assert cancelled >= 2


async def test_a_cancelled_stop_of_a_pickers_data_sources_releases_every_kv_subscriber() -> None:
    """``GatewayServer.stop_sources`` (a config reload's ``settle``: the old picker's KV-event sources;
    cancelled by the gateway's stop) on two real ``KVEventSources`` of three subscribers each: cancelled
    at any turn, none is held or running when the cancel is raised (fails before: it ended in the source
    whose stop the cancel landed in, the other's subscribers held and running; and, before the fix
    below, the first source's own other two as well, for good: out of ``_scrapers`` by then)."""
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway.server import GatewayServer

    cfg = parse_gateway_config({"pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}]})
    held: dict[int, list[tuple[Any, list[asyncio.Task[Any]]]]] = {}

    async def make() -> tuple[GatewayServer, list[Any]]:
        gw = GatewayServer(cfg, [], scrape=False)
        sources, held[id(gw)] = [], []
        for _ in range(2):
            source, mgr, tasks = await _three_kv_subscribers()
            gw._scrapers.append(source)
            sources.append(source)
            held[id(gw)].append((mgr, tasks))
        return gw, sources

    def left(obj: tuple[GatewayServer, list[Any]]) -> list[str]:
        return [f"{name} held" for mgr, _ in held[id(obj[0])] for name in mgr.subscribers] + [
            t.get_name() for _, tasks in held[id(obj[0])] for t in tasks if not t.done()
        ]

    async def cleanup(obj: tuple[GatewayServer, list[Any]]) -> None:
        for mgr, _ in held.pop(id(obj[0])):
            await mgr.close()

    def stop(obj: tuple[GatewayServer, list[Any]]) -> Awaitable[None]:
        return obj[0].stop_sources(obj[1])

    assert await _cancelled_at_each_turn(make, stop, left, cleanup) >= 1


async def _three_kv_subscribers() -> tuple[Any, Any, list[asyncio.Task[Any]]]:
    """A ``KVEventSources`` holding three real subscribers (ZMQ sockets, tasks) on its manager."""
    from kvgate.datalayer.endpoint import Endpoint
    from kvgate.datalayer.kvindex import BlockIndex
    from kvgate.datalayer.kvsubscriber import KVEventsManager, KVEventSources
    from kvgate.datalayer.store import EndpointStore

    store = EndpointStore()
    for a in ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"):
        store.add(Endpoint(address=a))
    mgr = KVEventsManager(BlockIndex())
    source = KVEventSources(store, mgr, lambda ep: ("tcp://127.0.0.1:1", None))
    await source.start()
    tasks = [t for sub in mgr.subscribers.values() if (t := sub._task) is not None]
    assert len(mgr.subscribers) == 3 and len(tasks) == 3
    return source, mgr, tasks


@pytest.mark.parametrize("what", ["KVEventSources.stop", "KVEventsManager.close"])
async def test_a_cancelled_kv_sources_stop_or_manager_close_releases_every_subscriber(what: str) -> None:
    """Each looped over its subscribers' stops (each run to its end) and, cancelled, ended in the one the
    cancel landed in: the others stayed subscribed and running; the source had marked itself stopped
    and dropped its list (a second stop returned at once). Both fail before."""
    held: dict[int, tuple[Any, list[asyncio.Task[Any]]]] = {}

    async def make() -> Any:
        source, mgr, tasks = await _three_kv_subscribers()
        held[id(source)] = (mgr, tasks)
        return source

    def left(source: Any) -> list[str]:
        mgr, tasks = held[id(source)]
        return [f"{name} held" for name in mgr.subscribers] + [t.get_name() for t in tasks if not t.done()]

    async def cleanup(source: Any) -> None:
        await held.pop(id(source))[0].close()

    def stop(source: Any) -> Awaitable[None]:
        return source.stop() if what == "KVEventSources.stop" else held[id(source)][0].close()

    assert await _cancelled_at_each_turn(make, stop, left, cleanup) >= 1


async def test_a_cancel_in_the_live_benchs_cleanup_still_stops_every_cluster_and_its_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Review s14-stops M1: the live multicluster bench's ``finally`` (``multicluster_live.run``) looped
    over its clusters' stops; a cancel (the first Ctrl-C under ``asyncio.run``) landing in the first
    cluster's stop was raised once that cluster's stop ended, and the loop ended there: the other
    clusters' processes were not stopped, and no namespace, veth, lo address or ``unreachable`` route
    removed (host state that outlives the process). Fails before: stopped ['east'] of 3, destroyed [],
    unisolated []. (A run failing in ``wait_ready``, the network monkeypatched: no root, no namespaces.)"""
    from kvgate.bench import multicluster_live as ml
    from kvgate.bench import netns

    stopped: list[str] = []
    destroyed: list[str] = []
    unisolated: list[int] = []
    in_stop = asyncio.Event()

    monkeypatch.setattr(netns, "free_net", lambda: 200)
    monkeypatch.setattr(netns, "isolate", lambda net: None)
    monkeypatch.setattr(netns, "unisolate", lambda net: unisolated.append(net))
    monkeypatch.setattr(netns.NsCluster, "create", lambda self: None)
    monkeypatch.setattr(netns.NsCluster, "destroy", lambda self: destroyed.append(self.name))

    async def start(self: ml.LiveCluster) -> None:
        return None

    async def wait_ready(self: ml.LiveCluster, *a: object, **k: object) -> None:
        raise RuntimeError(f"{self.d.name}: pods not ready")  # (the run fails: its finally cleans up)

    async def _stop(self: ml.LiveCluster) -> None:
        in_stop.set()
        await asyncio.sleep(0.3)  # (Proc.stop: SIGTERM, its grace)
        stopped.append(self.d.name)

    monkeypatch.setattr(ml.LiveCluster, "start", start)
    monkeypatch.setattr(ml.LiveCluster, "wait_ready", wait_ready)
    monkeypatch.setattr(ml.LiveCluster, "_stop", _stop)

    cfg = ml.LiveConfig()
    task = asyncio.create_task(ml.run(cfg, ["kvgate"], ["steady"], tmp_path, "cmd", tmp_path))
    await asyncio.wait_for(in_stop.wait(), 30)
    task.cancel()  # (a Ctrl-C while the bench cleans up)
    await asyncio.sleep(0.1)
    task.cancel()  # (a second one changes nothing)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    names = [d.name for d in cfg.clusters]
    assert len(names) >= 2
    assert (sorted(stopped), sorted(destroyed), unisolated) == (sorted(names), sorted(names), [200]), (
        f"stopped {stopped} of {len(names)}, destroyed {destroyed}, unisolated {unisolated}"
    )


async def test_a_failed_cluster_stop_or_namespace_destroy_does_not_skip_the_rest_of_the_cleanup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review s14-stops M1: each step of the live bench's cleanup goes on past one that failed (logged)."""
    from kvgate.bench import multicluster_live as ml
    from kvgate.bench import netns

    stopped: list[str] = []
    unisolated: list[int] = []
    monkeypatch.setattr(netns, "unisolate", lambda net: unisolated.append(net))

    class _Ns:
        def __init__(self, name: str) -> None:
            self.name = name

        def destroy(self) -> None:
            raise OSError(f"ip netns del {self.name}: busy")

    class _Cluster:
        def __init__(self, name: str) -> None:
            self.d = ml.LiveClusterDef(name, "tiny", 1, 1.0, "H100")
            self.ns = _Ns(name)
            self.procs: dict[str, Any] = {}

        async def stop(self) -> None:
            stopped.append(self.d.name)
            raise RuntimeError(f"{self.d.name}: stop failed")

    clusters: Any = [_Cluster("a"), _Cluster("b")]
    await ml.tear_down(None, clusters, 200)
    assert (stopped, unisolated) == (["a", "b"], [200])
    for text in ("a: stop failed", "b: stop failed", "ip netns del a", "ip netns del b"):
        assert text in caplog.text, text


async def test_a_cancelled_stop_of_the_runs_gateways_stops_every_gateway() -> None:
    """Review s14-stops M1: ``run_policy``'s ``for gw in gws: await gw.stop()`` ended in the gateway
    stop a cancel landed in (``Proc.stop`` SIGKILLs its own and raises), the others left running. Now
    ``stop_gateways`` stops every one (real processes), then raises the cancel."""
    from kvgate.bench import procs
    from kvgate.bench.multicluster_live import stop_gateways

    gws = [(await procs.start(f"gw{i}", ["sleep", "60"], None))[0] for i in range(3)]
    try:
        task = asyncio.create_task(stop_gateways(gws))
        await asyncio.sleep(0.02)  # (in the first one's SIGTERM grace)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [g.name for g in gws if g._running()] == []
    finally:
        for g in gws:
            await g.stop()


async def test_every_failed_watch_stop_of_a_pool_discovery_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s14-stops L1: ``PoolDiscovery._stop`` raised the first reflector's error only; a second
    one's was neither raised nor logged (fails before: 'second watch' nowhere)."""
    from kvgate.k8s.discovery import PoolDiscovery

    class _Failing:
        def __init__(self, why: str) -> None:
            self.name = why
            self.why = why

        async def stop(self) -> None:
            raise RuntimeError(self.why)

    class _D(PoolDiscovery):
        reflectors = [_Failing("first watch"), _Failing("second watch")]  # type: ignore[assignment]

    d = _D.__new__(_D)
    d.namespace, d.pool_name = "default", "llm"
    caplog.set_level(logging.DEBUG)
    seen = ""
    try:
        await d.stop()
    except BaseException as e:
        seen = repr(e) + "".join(repr(x) for x in getattr(e, "exceptions", ()))
    seen += caplog.text
    assert "first watch" in seen and "second watch" in seen, seen


@pytest.mark.parametrize("what", ["KVEventSources.stop", "KVEventsManager.close"])
async def test_a_failed_subscriber_stop_does_not_leave_the_others_subscribed(
    what: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Review s14-stops L2: the KV-event stop loops ended at the first subscriber stop that raised, the
    rest held (for good for a source: marked stopped, its list dropped). Now each failure is logged and
    the loop goes on (fails before: the error raised, two subscribers still held and running)."""
    source, mgr, tasks = await _three_kv_subscribers()
    for address, sub in mgr.subscribers.items():
        real = sub.stop

        async def failing(real: Callable[[], Awaitable[None]] = real, address: str = address) -> None:
            await real()  # (it did stop: only its error is the point)
            raise RuntimeError(f"{address}: stop failed")

        sub.stop = failing  # type: ignore[method-assign]
    try:
        await (source.stop() if what == "KVEventSources.stop" else mgr.close())
        left = [*(f"{name} held" for name in mgr.subscribers), *(t.get_name() for t in tasks if not t.done())]
        assert left == []
        for address in ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"):
            assert f"RuntimeError: {address}: stop failed" in caplog.text, caplog.text
    finally:
        for sub in mgr.subscribers.values():
            sub.stop = type(sub).stop.__get__(sub)  # type: ignore[method-assign]
        await mgr.close()


async def test_a_global_router_close_raises_the_channels_error_and_logs_the_sessions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s14-stops I1: both closes failing, the session's error replaced the EPP channels' (kept
    only as its ``__context__``). Now the first is raised and the second logged (fails before)."""
    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.router import GlobalRouter

    router = GlobalRouter(ClustersConfig((ClusterSpec("c1", epp="127.0.0.1:1"),)), "round-robin")
    await router.start()
    session = router._session
    assert session is not None

    async def epp_close() -> None:
        raise RuntimeError("the channels' close failed")

    async def session_close() -> None:
        raise RuntimeError("the session's close failed")

    router.epp.close = epp_close  # type: ignore[method-assign]
    session.close = session_close  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="the channels' close failed"):
            await router.close()
        assert "the session's close failed" in caplog.text
    finally:
        del session.close  # (the real one: the session is closed for good)
        await session.close()


async def test_a_cancelled_open_loop_ends_its_event_tasks() -> None:
    """Review s14-stops I2: the live bench's ``open_loop`` cancelled in its arrival loop left its event
    tasks (a cluster's kill, its restart) running while the bench tore the clusters down. Now they
    end before the cancel is raised (fails before: the event still fires after the cancel)."""
    import random

    from kvgate.bench.multicluster_live import open_loop
    from kvgate.bench.workloads import poisson_offsets

    # (a seed whose first arrival is late: the cancel lands in the arrival loop's sleep, not in a gather;
    # 5 s leaves room for a loaded machine between the event's start and the cancel)
    seed = next(s for s in range(5000) if next(poisson_offsets(random.Random(s), 1.0, 1)) > 5.0)
    fired: list[str] = []
    started = asyncio.Event()

    async def restart() -> None:
        # (started at once, then long enough that only a cancel ends it before the test looks)
        fired.append("started")
        started.set()
        try:
            await asyncio.sleep(60.0)
        except asyncio.CancelledError:
            fired.append("cancelled")
            raise
        fired.append("restart")

    specs: Any = iter([None] * 5)  # (never sent: the cancel comes first)
    task = asyncio.create_task(open_loop("http://127.0.0.1:1", specs, 1.0, 50.0, seed, 1.0, [(0.0, restart)]))
    # (wait for the event to start rather than sleep a guess: a loaded machine may be slow to run it)
    await asyncio.wait_for(started.wait(), 30.0)
    assert fired == ["started"], fired
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # (ended before the cancel was raised: nothing left running to fire later)
    assert fired == ["started", "cancelled"]
