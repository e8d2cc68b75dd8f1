"""Leader election on a Lease: one ready EPP at a time, the standby's data warm, failover on a crash."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fake_time import FakeTime
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.lease import LeaderElector
from kvgate.k8s.runtime import KubeOptions, KubePool

from .eppproc import EppProc, launch_epp

TICK = 0.125  # the electors' retry period: a power of two, so the test's time adds up exactly


def _elector(
    kube: KubeClient, identity: str, fake: FakeTime, lease_s: float = 1.0, renew_s: float = 0.75
) -> LeaderElector:
    """An elector on the test's time: its retry period, renew deadline and lease duration pass only as
    the test moves ``fake`` (no real sleeps)."""
    return LeaderElector(kube, name="l", namespace="default", identity=identity, lease_duration_s=lease_s,
                         renew_deadline_s=renew_s, retry_period_s=TICK, clock=fake.clock,
                         sleep=fake.sleep)  # fmt: skip


async def _tick(fake: FakeTime, electors: Sequence[LeaderElector], dt: float = TICK) -> None:
    """Move the test's time by ``dt`` (one retry period) and wait until each running elector has done
    the round that woke it (its HTTP round trips are real; only the waits between are on ``fake``)."""
    before = [e.rounds for e in electors]
    fake.advance(dt)
    await _until(lambda: all(e.rounds > n or e._task is None or e._task.done()
                             for e, n in zip(electors, before, strict=True)))  # fmt: skip


async def _until(cond, within_s: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not await _value(cond()):
        assert loop.time() - t0 < within_s, "condition not met in time"
        await asyncio.sleep(0.05)
    return loop.time() - t0


async def test_one_leader_and_takeover_after_a_crash(double: ApiServerDouble, kube: KubeClient) -> None:
    """On the test's time: a standby retrying every period never takes a renewed Lease, and takes it
    once the holder's record has not changed for the lease duration as the standby observed it."""
    fake = FakeTime()
    a, b = _elector(kube, "a", fake, 3.0, 2.0), _elector(kube, "b", fake, 3.0, 2.0)
    a.start()
    await _until(lambda: a.rounds >= 1)
    assert a.is_leader
    b.start()
    await _until(lambda: b.rounds >= 1)
    assert b.holder == "a" and not b.is_leader
    for _ in range(32):  # 4 s (more than the lease) of renewals: b retries each tick and must not take it
        await _tick(fake, [a, b])
        assert a.is_leader and not b.is_leader and b.holder == "a"
    crash = fake.now
    await a.stop(release=False)  # a crash: the Lease is left to expire
    while not b.is_leader:
        await _tick(fake, [b])
        assert fake.now - crash < 10.0, "b never took the Lease over"
    # a's last renewal was at the crash's tick; b saw it then or at the next tick (its read and a's
    # renewal race within a tick), then waited the 3 s lease from there.
    assert fake.now - crash in (3.0, 3.0 + TICK), fake.now - crash
    lease = double.get(R.LEASE, "l")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    await b.stop()  # a clean stop releases it
    assert double.get(R.LEASE, "l")["spec"]["holderIdentity"] == ""


async def test_racing_candidates_never_both_lead(double: ApiServerDouble, kube: KubeClient) -> None:
    electors = [_elector(kube, f"c{i}", FakeTime()) for i in range(4)]
    results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
    assert sum(results) == 1  # one create wins, the others get 409


async def _value(x: object) -> object:
    return await x if asyncio.iscoroutine(x) else x


class _SlowLeases(ApiServerDouble):
    """Answers Lease reads after ``get_delay`` seconds and Lease writes after ``put_delay``, on ``sleep``
    (the test's time)."""

    get_delay = put_delay = 0.0
    sleep = staticmethod(asyncio.sleep)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: list[str] = []  # the method of each Lease request, as it arrives (per instance)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if "/leases" in request.path:
            self.arrived.append(request.method)
            delay = {"GET": self.get_delay, "PUT": self.put_delay}.get(request.method, 0.0)
            if delay:
                await self.sleep(delay)
        return await super()._handle(request)


def _lease_requests(d: _SlowLeases, method: str) -> int:
    return d.arrived.count(method)


async def test_a_leader_steps_down_by_its_renew_deadline_however_slow_the_api_server() -> None:
    """The renewal's read answers just inside the renew deadline and its write never does: the leader
    steps down at its last renewal + renew_deadline (the whole attempt is bounded, as in client-go), not
    after the read's and the write's deadlines added up (it used to act ~2 x the deadline past its last
    renewal, while a standby takes over after the lease duration). On the test's time (session 15; it
    was real time, with bounds of a second for a loaded host): exactly at the deadline, to the tick."""
    fake = FakeTime()
    async with _SlowLeases(bookmark_interval=0.2) as d:
        d.sleep, d.arrived = fake.sleep, []
        kube = await KubeClient.connect(server=d.url)
        down: list[float] = []
        e = LeaderElector(kube, name="l", namespace="default", identity="a", lease_duration_s=6.0,
                          renew_deadline_s=3.0, retry_period_s=0.25, clock=fake.clock, sleep=fake.sleep,
                          on_change=lambda lead: None if lead else down.append(fake.now))  # fmt: skip
        e.start()
        try:
            await _until(lambda: e.rounds >= 1)
            assert e.is_leader
            renewed = e._renewed_at
            d.get_delay, d.put_delay = 2.7, 60.0
            gets, puts = _lease_requests(d, "GET"), _lease_requests(d, "PUT")
            fake.advance(0.25)  # the next round: its read is answered 2.7 s after it arrives
            await _until(lambda: _lease_requests(d, "GET") > gets)
            await _until(lambda: len(fake._wakes) == 2)  # the read's delay and the round's deadline
            fake.advance(fake.next_wake() - fake.now)  # (0.25 + 2.7) the read answered...
            await _until(lambda: _lease_requests(d, "PUT") > puts)  # ...the write sent, never answered
            assert e.is_leader
            fake.advance(fake.next_wake() - fake.now)  # the next thing due: the round's deadline
            await _until(lambda: not e.is_leader)
            acted = down[0] - renewed  # from its last renewal to its step-down
            assert acted == 3.0, acted  # at the deadline (it was ~5.9 s: each request bounded alone)
        finally:
            await e.stop(release=False)
            await kube.close()


def _pool() -> dict:
    spec = {"selector": {"matchLabels": {"app": "m"}}, "targetPorts": [{"number": 8000}]}
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "llm"}, "spec": spec}  # fmt: skip


async def test_two_epps_failover_on_a_lease(double: ApiServerDouble, tmp_path: Path) -> None:
    double.create(_pool())
    for i in range(2):
        double.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"m{i}", "labels": {"app": "m"}}}
        )
        double.set_pod_status(f"m{i}", ip=f"10.0.0.{i + 1}", ready=True)
    ha = ["--pool-name", "llm", "--ha-enable-leader-election", "--ha-lease-duration", "2",
          "--ha-renew-deadline", "1.5", "--ha-retry-period", "0.2"]  # fmt: skip
    epps = list(
        await asyncio.gather(*(launch_epp(double.url, tmp_path / f"epp{i}.log", *ha) for i in range(2)))
    )
    try:
        await _until(lambda: _one_ready(epps))
        states = [await e.readyz() for e in epps]
        leader = epps[[s[0] for s in states].index(200)]
        standby = epps[1 - epps.index(leader)]
        status, reason = await standby.readyz()
        assert status == 503 and reason.startswith("not the leader (lease held by ")
        # The standby's data is populated all the same: ready for a failover with no warm-up.
        await _until(lambda: _has(standby, 'inference_pool_ready_pods{name="llm"} 2.0'))
        await leader.stop(signal.SIGKILL)  # a crash: no release
        waited = await _until(lambda: _ready(standby))
        assert waited < 10
        lease = double.get(R.LEASE, "kvgate-epp-llm")
        assert lease["spec"]["leaseTransitions"] >= 1
    finally:
        for e in epps:
            await e.stop()


async def _one_ready(epps: list[EppProc]) -> bool:
    return sorted([(await e.readyz())[0] for e in epps]) == [200, 503]


async def _ready(e: EppProc) -> bool:
    return (await e.readyz())[0] == 200


async def _has(e: EppProc, line: str) -> bool:
    return line in (await e.metric(line.split("{")[0])).splitlines()


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def test_leader_election_needs_discovery(capsys: pytest.CaptureFixture[str]) -> None:
    from kvgate.extproc.cli import main

    assert main(["--endpoints", "127.0.0.1:1", "--ha-enable-leader-election"]) == 2
    assert "needs Kubernetes discovery" in capsys.readouterr().err


class _GarbledLeases(ApiServerDouble):
    """While ``garbled``, answers Lease requests 200 with a body that is not JSON (a broken proxy)."""

    garbled = False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.garbled and "/leases" in request.path:
            return web.Response(text="<html>gateway says hi</html>", content_type="application/json")
        return await super()._handle(request)


async def test_a_leader_whose_renewal_answers_non_json_steps_down_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 2xx whose body is not JSON is a renewal not confirmed: the leader steps down by its renew
    deadline and keeps trying (the election loop used to end on it with is_leader still True: two
    writers once a standby took over); once the API answers again it leads again, and stop() releases."""
    fake = FakeTime()
    async with _GarbledLeases(bookmark_interval=0.2) as d:
        kube = await KubeClient.connect(server=d.url)
        e = _elector(kube, "a", fake)
        e.start()
        try:
            await _until(lambda: e.rounds >= 1)
            assert e.is_leader
            renewed = e._renewed_at
            d.garbled = True
            while e.is_leader:
                await _tick(fake, [e])
                assert fake.now - renewed < 10.0, "never stepped down"
            assert fake.now - renewed == 0.75  # at its renew deadline
            assert e.dead() is None and e.error is not None
            assert "JSONDecodeError" in caplog.text
            d.garbled = False
            await _tick(fake, [e])
            assert e.is_leader
        finally:
            await e.stop()
            await kube.close()
        assert d.get(R.LEASE, "l", "default")["spec"]["holderIdentity"] == ""  # released


async def test_an_election_loop_that_dies_steps_down_says_so_and_still_releases(
    double: ApiServerDouble, kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTime()
    e = _elector(kube, "a", fake)
    e.start()
    await _until(lambda: e.rounds >= 1)
    assert e.is_leader

    async def broken() -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(e, "try_acquire_or_renew", broken)
    await _tick(fake, [e])  # the next round: the loop ends on the bug
    assert not e.is_leader
    assert "RuntimeError" in (e.dead() or "")
    await e.stop()  # does not raise, and gives the Lease up
    assert double.get(R.LEASE, "l", "default")["spec"]["holderIdentity"] == ""


class _SlowWrites(ApiServerDouble):
    """Lease writes (POST and PUT) take ``write_s`` seconds on the injected ``clock`` (a test's time)."""

    write_s = 0.0
    clock = [100.0]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await super()._handle(request)  # the server writes renewTime as it stores it...
        if "/leases" in request.path and request.method in ("POST", "PUT"):
            self.clock[0] += self.write_s  # ...and its answer arrives this much later
        return response


async def test_the_renew_deadline_runs_from_when_the_renewal_was_sent_not_answered() -> None:
    """A standby may see the renewed record as soon as the server stores it; a leader that timed its
    deadline from the (slow) answer led for up to that much past when a standby took over."""
    clock = [100.0]
    async with _SlowWrites(bookmark_interval=0.2) as d:
        d.clock, d.write_s = clock, 9.0
        kube = await KubeClient.connect(server=d.url)
        # (sleep: no round runs here, try_acquire_or_renew is called directly)
        e = LeaderElector(kube, name="l", namespace="default", identity="a", lease_duration_s=15.0,
                          renew_deadline_s=10.0, clock=lambda: clock[0], sleep=asyncio.sleep)  # fmt: skip
        try:
            assert await e.try_acquire_or_renew()  # created (POST) at 100, answered at 109
            assert e._renew_left() == pytest.approx(1.0)  # 100 + 10 - 109, not 10
            clock[0] = 120.0
            assert await e.try_acquire_or_renew()  # renewed (PUT) at 120, answered at 129
            assert e._renew_left() == pytest.approx(1.0)
            e.is_leader = True
            clock[0] = 130.5
            assert not e.leads()  # 10.5 s after the renewal was sent
        finally:
            await kube.close()


def test_slow_leases_records_per_instance() -> None:
    """Review s15-k8s F5 nit: ``arrived`` was one class-level list, shared by every instance unless a test
    reset it."""
    assert _SlowLeases().arrived is not _SlowLeases().arrived


def test_a_clock_without_its_sleep_is_refused() -> None:
    """Review s15-k8s F5: the renew deadline is measured on ``clock`` and waited for on ``sleep``; one
    without the other bounded it on two times. Fails before (accepted)."""
    fake = FakeTime()
    for kw in ({"clock": fake.clock}, {"sleep": fake.sleep}):
        with pytest.raises(ValueError, match="give both"):
            LeaderElector(None, name="l", namespace="default", identity="a", **kw)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="give both"):
            KubePool(KubeOptions("llm", "default", leader_election=True), EndpointStore(), **kw)  # type: ignore[arg-type]
    KubePool(KubeOptions("llm", "default"), EndpointStore(), clock=fake.clock)  # no election: the ages' clock


async def test_a_leader_steps_down_by_its_renew_deadline_in_real_time() -> None:
    """Review s15-k8s F5: the renew deadline as production wires it (the defaults: ``time.monotonic`` and
    ``asyncio.sleep``), a Lease write that is never answered: the leader steps down, and not before its
    last renewal + renew deadline. No upper bound but a generous one (a loaded host)."""
    async with _SlowLeases(bookmark_interval=0.2) as d:
        kube = await KubeClient.connect(server=d.url)
        down: list[float] = []
        e = LeaderElector(kube, name="l", namespace="default", identity="a", lease_duration_s=2.0,
                          renew_deadline_s=0.5, retry_period_s=0.1,
                          on_change=lambda lead: None if lead else down.append(time.monotonic()))  # fmt: skip
        e.start()
        try:
            await _until(lambda: e.is_leader, within_s=30.0)
            d.put_delay = 3600.0  # every renewal's write hangs (the request's own backstop: 30 s)
            await _until(lambda: bool(down), within_s=30.0)
            assert not e.is_leader
            assert down[0] >= e._renewed_at + 0.5 - 0.01  # (monotonic: the elector's clock)
        finally:
            await e.stop()
            await kube.close()
