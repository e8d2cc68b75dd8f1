"""A stop that cancels a background task and waits for it raises its own caller's cancellation.

``task.cancel()`` then ``with suppress(CancelledError): await task`` (the one-shot stops of the gateway,
the EPP, the data layer's subscriber and scraper, the multi-cluster hub, fetcher and global gateway, the
simulator, the benches' load clients and delay relay) caught a cancel of the *stopping* coroutine, landing
while it waited or in the turn the task ended, as if it were the task's: the stop went on and returned, and
whoever cancelled it (a shutdown, ``asyncio.run``'s end, a timeout) waited on a coroutine that had
forgotten it. They now use ``kvgate.aio.cancel_and_wait`` / ``cancel_all_and_wait`` (``asyncio.wait``
raises the caller's cancel). Each distinct shape is checked on real objects with the shared
``stop_raises_a_cancel`` fixture (tests/conftest.py): one background task in an attribute, tasks in a list /
dict / set, and a task local to a ``finally`` (the delay relay's pump); a source check keeps the pattern
from coming back anywhere in ``src/``."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "kvgate"
WHEN = ["waiting", "as it ends"]
Plant = Callable[[asyncio.Task[Any]], None]
Case = tuple[Plant, Callable[[], Awaitable[Any]]]


def _suppresses_cancel(item: ast.withitem) -> bool:
    call = item.context_expr
    if not isinstance(call, ast.Call):
        return False
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    return name == "suppress" and any(
        re.search(r"\b(CancelledError|BaseException)\b", ast.unparse(a)) for a in call.args
    )


def suppressed_task_awaits(src: Path) -> list[str]:
    """``with suppress(..., CancelledError or BaseException, ...):`` whose body awaits a task or future
    (``await t``, not a call): the pattern that swallows a cancel of the awaiting coroutine."""
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.With | ast.AsyncWith) and any(_suppresses_cancel(i) for i in node.items):
                for sub in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                    if isinstance(sub, ast.Await) and not isinstance(sub.value, ast.Call):
                        found.append(f"{path.relative_to(src)}:{sub.lineno}")
    return found


def test_no_stop_awaits_a_task_inside_suppress_cancelled_error() -> None:
    assert suppressed_task_awaits(SRC) == []


def test_the_source_check_finds_the_pattern(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import asyncio, contextlib\n"
        "async def stop(t):\n    t.cancel()\n"
        "    with contextlib.suppress(asyncio.CancelledError):\n        await t\n"
        "async def base(t):\n"
        "    with contextlib.suppress(BaseException):\n        await t\n"
        "async def fine(t):\n"
        "    with contextlib.suppress(asyncio.CancelledError):\n        await asyncio.sleep(1)\n"
    )
    assert suppressed_task_awaits(tmp_path) == ["m.py:5", "m.py:8"]


def test_no_asyncio_wait_for_in_src() -> None:
    """``asyncio.wait_for`` on Python 3.11 returns the awaited result instead of raising a cancellation
    that lands in the turn it completes (CPython gh-86296): ``asyncio.timeout`` /
    ``kvgate.aio.wait_event`` instead (sessions 9-11 replaced every one)."""
    found = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("asyncio.wait_for", "wait_for")
    ]
    assert found == []


# --- the stops themselves -----------------------------------------------------------------------------


def _kv_subscriber() -> Case:
    from kvgate.datalayer.kvindex import BlockIndex
    from kvgate.datalayer.kvsubscriber import KVEventSubscriber

    sub = KVEventSubscriber(BlockIndex(), "10.0.0.1:8000", "tcp://127.0.0.1:1")
    return (lambda t: setattr(sub, "_task", t)), sub.stop


def _scraper() -> Case:
    from kvgate.datalayer.scraper import MetricsScraper
    from kvgate.datalayer.store import EndpointStore

    scraper = MetricsScraper(EndpointStore())
    return (lambda t: scraper._tasks.__setitem__("10.0.0.1:8000", t)), scraper.stop  # type: ignore[index]


def _fetcher() -> Case:
    from kvgate.multicluster.fetcher import Fetcher

    fetcher = Fetcher(lambda: [])
    return (lambda t: setattr(fetcher, "_task", t)), fetcher.stop


def _global_gateway() -> Case:
    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.serve import GlobalGateway

    gw = GlobalGateway(ClustersConfig((ClusterSpec("c1", epp="127.0.0.1:1"),)), "round-robin", fetch=False)
    return (lambda t: setattr(gw, "_reload_task", t)), gw.stop


def _kv_publisher() -> Case:
    from kvgate.sim.kvevents import KVEventPublisher

    pub = KVEventPublisher(replay_port=None)
    return (lambda t: setattr(pub, "_task", t)), pub.close


def _sim_replica() -> Case:
    from kvgate.sim.server import Replica

    replica = Replica()

    def plant(t: asyncio.Task[Any]) -> None:
        replica.running = True
        replica._driver = t

    return plant, replica.stop


def _gateway() -> Case:
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway.server import GatewayServer

    cfg = parse_gateway_config({"pools": [{"name": "p", "endpoints": ["127.0.0.1:1"], "models": ["m"]}]})
    gw = GatewayServer(cfg, [], scrape=False)
    return gw._tasks.append, gw.stop


def _bench_clients() -> Case:
    from kvgate.bench.sim_capacity import Clients

    clients = Clients([], [], 1)
    return clients._tasks.append, clients.stop


def _delay_relay() -> Case:
    from kvgate.bench.delay_relay import DelayRelay, Route

    relay = DelayRelay(Route("127.0.0.1", 0, "127.0.0.1", 1, 0.0))
    return relay._tasks.add, relay.close


CASES = {
    "datalayer KVEventSubscriber.stop (one task)": _kv_subscriber,
    "datalayer MetricsScraper.stop (a dict of tasks)": _scraper,
    "multicluster Fetcher.stop": _fetcher,
    "multicluster GlobalGateway.stop": _global_gateway,
    "sim KVEventPublisher.close": _kv_publisher,
    "sim Replica.stop": _sim_replica,
    "gateway GatewayServer.stop (a list of tasks)": _gateway,
    "bench sim_capacity Clients.stop": _bench_clients,
    "bench DelayRelay.close (a set of tasks)": _delay_relay,
}


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("case", list(CASES))
async def test_a_stop_raises_its_callers_cancel(stop_raises_a_cancel: Any, case: str, when: str) -> None:
    plant, stop = CASES[case]()
    await stop_raises_a_cancel(plant, stop, when)
    async with asyncio.timeout(10):
        await stop()  # (a stop cut so leaves the object one a second stop finishes)


@pytest.mark.parametrize("when", WHEN)
async def test_a_cancelled_replica_stop_still_crashes_its_requests(
    stop_raises_a_cancel: Any, when: str
) -> None:
    """``Replica.stop`` sets ``running = False`` first, so no later stop gets past its guard: a cancel raised
    while it waits for its driver must not skip the crash itself (the in-flight requests marked crashed and
    woken, else their handlers wait forever). Review s11-hard M1."""
    from kvgate.sim.replica_base import Pending
    from kvgate.sim.server import Replica

    replica = Replica()
    pending = Pending(None, 0.0, 1)  # type: ignore[arg-type]
    replica._pending["r1"] = pending
    handler = asyncio.create_task(pending.wait())  # the request's handler, waiting for tokens

    def plant(t: asyncio.Task[Any]) -> None:
        replica.running = True
        replica._driver = t

    await stop_raises_a_cancel(plant, replica.stop, when)
    await replica.close()
    await asyncio.wait([handler], timeout=5)
    assert pending.crashed and handler.done(), "a request of the stopped replica waits forever"


@pytest.mark.parametrize("when", WHEN)
async def test_the_delay_relays_pump_raises_a_cancel_landing_while_it_stops_its_reader(when: str) -> None:
    """The pump's ``finally`` (a task local to it): the pump ended (its write failed) and is stopping its
    reader when it is cancelled: it ends cancelled, not with its return value."""
    from kvgate.bench.delay_relay import DelayRelay, Route

    relay = DelayRelay(Route("127.0.0.1", 0, "127.0.0.1", 1, 0.0))
    released = asyncio.Event()

    class _Src:  # the reader task's source: a read that, once cancelled, winds down until released
        async def read(self, n: int) -> bytes:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await released.wait()
                raise
            return b""

    class _Dst:  # the pump's destination: its first write fails
        def write(self, data: bytes) -> None:
            raise OSError("gone")

    src = _Src()
    pump = asyncio.create_task(relay._pump(src, _Dst(), 0.0))  # type: ignore[arg-type]
    # Find the pump's reader; hand the pump a chunk through its queue so that it writes and fails.
    await asyncio.sleep(0)
    (reader,) = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("_pump.<locals>.read")]
    queue = reader.get_coro().cr_frame.f_locals["queue"]
    queue.put_nowait((0.0, b"x"))
    for _ in range(100):
        if reader.cancelling():
            break
        await asyncio.sleep(0)
    assert reader.cancelling() and not reader.done() and not pump.done()  # the pump waits for its reader
    if when == "waiting":
        pump.cancel()
        released.set()
    else:
        released.set()
        while not reader.done():  # noqa: ASYNC110 (turn by turn: the pump must not resume first)
            await asyncio.sleep(0)
        assert not pump.done()
        pump.cancel()
    await asyncio.wait([pump], timeout=10)
    assert pump.cancelled(), f"the pump swallowed its caller's cancel: {pump!r}"


# --- cancel_all_and_wait ------------------------------------------------------------------------------


def test_cancel_all_and_wait_waits_for_all_together_and_logs_each_ones_failure(
    caplog: pytest.LogCaptureFixture, run_virtual: Any
) -> None:
    from kvgate.aio import cancel_all_and_wait

    log = logging.getLogger("test_stop_cancels")

    async def broken() -> None:
        raise RuntimeError("a bug")

    async def deaf() -> None:  # swallows its first cancel, ends at the second
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(60)

    async def main() -> None:
        tasks = [asyncio.create_task(broken(), name="b"), asyncio.create_task(deaf(), name="d1"),
                 asyncio.create_task(deaf(), name="d2")]  # fmt: skip
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await cancel_all_and_wait(tasks, "the worker", log, stuck_s=5.0)
        assert loop.time() - t0 == pytest.approx(5.0)  # one stuck_s for both deaf tasks, not one each
        assert all(t.done() for t in tasks)
        await cancel_all_and_wait([], "nothing", log)  # (no task: returns at once)

    run_virtual(main)
    assert "the worker 'b' had stopped: RuntimeError('a bug')" in caplog.text
    assert caplog.text.count("cancelling it again") == 2
    assert "the worker 'd1' did not end 5.0s" in caplog.text and "the worker 'd2' did not end" in caplog.text


def test_a_task_that_swallowed_its_cancel_is_still_stopped_when_the_stop_is_cancelled(
    caplog: pytest.LogCaptureFixture, run_virtual: Any
) -> None:
    """The stop running ``cancel_and_wait`` is cancelled during its first wait: the cancel is raised, and a
    task that swallowed the one cancel it got is still cancelled again (logged) by the rounds left to run
    without the caller. Before, it ran on, unsaid (review s11-hard L2)."""
    from kvgate.aio import STUCK_S, cancel_and_wait

    log = logging.getLogger("test_stop_cancels")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ended: list[float] = []

        async def deaf_once() -> None:  # swallows the first cancel (as wait_for may on 3.11)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            try:
                await asyncio.sleep(3600)
            finally:
                ended.append(loop.time())

        task = asyncio.create_task(deaf_once())
        await asyncio.sleep(0)
        t0 = loop.time()
        stopper = asyncio.create_task(cancel_and_wait(task, "the deaf task", log))
        await asyncio.sleep(1.0)
        stopper.cancel()  # the stop's own caller gives up
        await asyncio.wait([stopper])
        assert stopper.cancelled()
        await asyncio.sleep(60)
        assert ended and ended[0] - t0 == pytest.approx(1.0 + STUCK_S), "a deaf task left running, unsaid"

    run_virtual(main)
    assert (
        "the deaf task did not end 5.0s after it was cancelled (the cancellation was swallowed)"
        in caplog.text
    )
