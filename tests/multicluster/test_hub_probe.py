"""The hub EPP's connect probe (``ClusterDirector.on_abandoned``, ``connects``): review s15-labels M1
(a failed probe backs a cluster off only corroborated and never the last available cluster), L1 (a
stalled event loop does not judge a listening gateway down) and L3 (the timed-out branch, deterministic);
review s15-fixes-a L2 (nor one named by host), I1 (a suspicion expires), I4 (a port past 65535)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from kvgate.datalayer.endpoint import Endpoint
from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import (
    CLUSTER_LABEL,
    PROBE_EVERY_S,
    PROBE_TIMEOUT_S,
    SUSPECT_FOR_S,
    ClusterDirector,
    connects,
)


async def _director(names: tuple[str, ...], clock: list[float], up: list[bool]) -> ClusterDirector:
    async def probe(_address: str) -> bool:
        return up[0]

    cfg = ClustersConfig(tuple(ClusterSpec(n, gateway=f"10.0.0.{i}:8080") for i, n in enumerate(names, 1)))
    return ClusterDirector(cfg, "kvgate", clock=lambda: clock[0], seed=0, probe=probe)


def _endpoint(director: ClusterDirector, name: str) -> Endpoint:
    return next(ep for ep in director.store.all() if ep.labels[CLUSTER_LABEL] == name)


async def _leave(director: ClusterDirector, name: str, clock: list[float]) -> None:
    """A client of ``name`` leaves before its answer; the probe it starts ends; the clock moves on."""
    req: Any = object()
    director.on_abandoned(req, _endpoint(director, name))
    director.on_finished(req, _endpoint(director, name), None, False)  # (the session's end follows)
    for _ in range(3000):  # (30 s: 0.5 s before)
        if not director._probes:
            break
        await asyncio.sleep(0.01)
    clock[0] += PROBE_EVERY_S


async def test_failed_probes_never_back_the_only_cluster_off() -> None:
    """An EPP that cannot reach a gateway Envoy reaches (egress rules, split DNS): with one cluster, every
    early-leaving client backed it off and the hub answered 503 to everyone. Now never."""
    clock = [100.0]
    director = await _director(("west",), clock, [False])
    west = director.states["west"]
    for _ in range(5):
        await _leave(director, "west", clock)
    assert len(director._probed_at) == 1  # (probed: the failures were seen)
    assert west.failures == 0 and west.available(clock[0])


async def test_a_failed_probe_backs_off_only_when_corroborated_and_another_cluster_is_up() -> None:
    clock = [100.0]
    up = [False]
    director = await _director(("west", "east"), clock, up)
    west = director.states["west"]
    await _leave(director, "west", clock)
    assert west.failures == 0  # a first failure: suspected only
    # A request to west answered well between the probes: Envoy reaches it, the probe's view is the EPP's.
    answered: Any = object()
    director.on_finished(answered, _endpoint(director, "west"), None, True)
    await _leave(director, "west", clock)
    assert west.failures == 0
    await _leave(director, "west", clock)  # a second failure in a row, nothing answered between
    assert west.failures == 1 and not west.available(clock[0] - PROBE_EVERY_S)  # (at the probe)
    # A probe that connects clears the suspicion: the next failure is a first one again.
    clock[0] += 60.0
    up[0] = True
    await _leave(director, "west", clock)
    up[0] = False
    await _leave(director, "west", clock)
    assert west.failures == 1


async def test_no_back_off_while_the_other_clusters_are_backed_off() -> None:
    clock = [100.0]
    director = await _director(("west", "east"), clock, [False])
    director.states["east"].failed(clock[0] + 100.0)  # east backed off for a long while
    for _ in range(4):
        await _leave(director, "west", clock)
    assert director.states["west"].failures == 0


async def test_a_stalled_loop_does_not_judge_a_listening_gateway_down() -> None:
    """Review s15-labels L1 (probe_loop_stall_repro.py): the loop stalls past the probe's timeout while its
    connect to a listening gateway is in flight; the timeout and the connect's completion come in the
    same loop turn and the timeout won (False for 1-3 turns before the stall)."""
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        res = []
        for turns in range(6):
            task = asyncio.create_task(connects(f"127.0.0.1:{port}", 0.05))
            for _ in range(turns):
                await asyncio.sleep(0)
            time.sleep(0.2)  # noqa: ASYNC251 (deliberate: the loop stalls 4x the probe's timeout (a busy EPP: other streams, GC)
            res.append((turns, await task))
        assert res == [(t, True) for t in range(6)]
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_stalled_loop_does_not_judge_a_listening_gateway_named_by_host_down() -> None:
    """Review s15-fixes-a L2 (the reviewer's test): the same stall with a host name (a cloud load
    balancer's DNS name, a ``*.svc`` name): the lookup ran in an executor thread inside the same timeout,
    which won in the turn the lookup completed, before any socket existed (False for 1-3 turns)."""
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        res = []
        for turns in range(6):
            task = asyncio.create_task(connects(f"localhost:{port}", 0.05))
            for _ in range(turns):
                await asyncio.sleep(0)
            time.sleep(0.2)  # noqa: ASYNC251 (deliberate: the loop stalls 4x the probe's timeout)
            res.append((turns, await task))
        assert res == [(t, True) for t in range(6)]
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_connect_that_never_completes_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s15-labels L3: the timed-out branch, deterministic (a TEST-NET address is refused at once on
    some networks): a connect that never completes is down, within the timeout, and is cancelled."""
    loop = asyncio.get_running_loop()
    cancelled: list[bool] = []

    async def never(*_a: Any, **_k: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    monkeypatch.setattr(loop, "sock_connect", never)
    async with asyncio.timeout(30.0):  # (without the probe's own timeout: TimeoutError here, no hang)
        assert not await connects("127.0.0.1:9", timeout_s=0.05)
    assert cancelled == [True]


async def test_a_suspicion_expires() -> None:
    """Review s15-fixes-a I1: a failed probe's suspicion had no age limit, so a failure hours later (a
    cluster with no answered traffic meanwhile) backed the cluster off at once, "corroborated" by the old
    one. Now a failure more than SUSPECT_FOR_S after the last one is a first failure again."""
    clock = [100.0]
    director = await _director(("west", "east"), clock, [False])
    west = director.states["west"]
    await _leave(director, "west", clock)
    clock[0] += SUSPECT_FOR_S  # (the last failure SUSPECT_FOR_S + PROBE_EVERY_S ago)
    await _leave(director, "west", clock)
    assert west.failures == 0  # a first failure again: suspected only
    await _leave(director, "west", clock)  # corroborated, PROBE_EVERY_S later
    assert west.failures == 1


async def test_a_suspicion_lasts_from_the_last_failure() -> None:
    """A gateway that keeps failing probes stays suspected: each failure renews the suspicion, so failures
    less than SUSPECT_FOR_S apart keep backing it off, however long ago the first was."""
    clock = [100.0]
    director = await _director(("west", "east"), clock, [False])
    west = director.states["west"]
    gap = SUSPECT_FOR_S * 0.6
    await _leave(director, "west", clock)
    for n in range(1, 4):
        clock[0] += gap - PROBE_EVERY_S
        await _leave(director, "west", clock)
        assert west.failures == n


def test_the_suspicion_limit_is_bounded() -> None:
    assert PROBE_EVERY_S < SUSPECT_FOR_S <= 60.0


async def test_a_lookup_that_outlasts_the_timeout_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host-name path (review s15-fixes-a L2) still times a slow lookup out: not finished when the
    time is up, or finished during a loop stall but after more than the timeout of its own."""
    real = socket.getaddrinfo

    def slow(*a: Any, **k: Any) -> Any:
        time.sleep(0.15)
        return real(*a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        assert not await connects(f"localhost:{port}", 0.05)  # the loop free: its timer fires first
        for _ in range(3000):  # (that lookup ended: the next probe's is its own; 30 s, not a timing check)
            if hub._LOOKUPS.running == 0:
                break
            await asyncio.sleep(0.01)
        hub._LOOKUPS.forget()  # (its answer, kept 10 s, is not the next probe's lookup)
        task = asyncio.create_task(connects(f"localhost:{port}", 0.05))
        await asyncio.sleep(0)
        time.sleep(0.4)  # noqa: ASYNC251 (the loop stalls; the lookup ends meanwhile, 0.15 s > 0.05 s)
        assert not await task
        monkeypatch.setattr(socket, "getaddrinfo", real)
        assert await connects(f"localhost:{port}", 0.5)  # (the same gateway, looked up in time)
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize("address", ["127.0.0.1:70000", "localhost:70000"])
async def test_a_port_out_of_range_is_down(address: str) -> None:
    """Review s15-fixes-a I4: raised OverflowError (neither OSError nor ValueError) out of the probe."""
    assert not await connects(address, 0.5)


async def test_a_failure_is_recorded_at_its_probes_start() -> None:
    """Review s16-hard I1: the spacing (PROBE_EVERY_S) measured probe starts, the suspicion's age the
    failures' ends, so the docs' "at most 30 s after the last failed one" held for neither. Now both are
    starts: a probe that took 1 s (timed out) started at 100, the next started at 100 + SUSPECT_FOR_S + 0.5
    is a first failure again (on the old code: 29.5 s after the first one's end, backed off)."""
    clock = [100.0]
    slow = [True]

    async def probe(_address: str) -> bool:
        if slow[0]:
            clock[0] += PROBE_TIMEOUT_S  # (the probe's time passes: a connect that timed out)
        return False

    cfg = ClustersConfig(
        tuple(ClusterSpec(n, gateway=f"10.0.0.{i}:8080") for i, n in enumerate(("west", "east"), 1))
    )
    director = ClusterDirector(cfg, "kvgate", clock=lambda: clock[0], seed=0, probe=probe)
    west = director.states["west"]
    await _leave(director, "west", clock)  # started at 100, failed at 101
    assert director._suspect["west"] == 100.0
    clock[0] = 100.0 + SUSPECT_FOR_S + 0.5
    slow[0] = False
    await _leave(director, "west", clock)
    assert west.failures == 0  # a first failure again: suspected only
    await _leave(director, "west", clock)  # corroborated, PROBE_EVERY_S after it started
    assert west.failures == 1


async def test_a_failed_lookup_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s17-fixes-a (test gap): only answers are kept LOOKUP_TTL_S, never a failure: a name whose
    lookup failed is looked up again at once, by the probe and by the fetcher's resolver alike."""
    from kvgate.multicluster.fetcher import ProbeLookups

    name = "flaky.kvgate-review.test"
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, *a: Any, **k: Any) -> Any:
        if host != name:
            return real(host, *a, **k)
        asked.append(host)
        if len(asked) % 2:  # (every other lookup fails: the first of each pair below)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1", *a, **k)

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(hub.socket, "getaddrinfo", fake)
    try:
        hub._LOOKUPS.forget()
        assert await hub.connects(f"{name}:{port}", 5.0) is False
        assert await hub.connects(f"{name}:{port}", 5.0) is True  # (within LOOKUP_TTL_S of the failure)
        assert len(asked) == 2, asked
        hub._LOOKUPS.forget()
        resolver = ProbeLookups(lambda: 5.0)
        with pytest.raises(OSError):
            await resolver.resolve(name, port)
        assert [r["host"] for r in await resolver.resolve(name, port)] == ["127.0.0.1"]
        assert len(asked) == 4, asked
    finally:
        hub._LOOKUPS.forget()
        server.close()
        await server.wait_closed()
