"""The issue's "done when": `kvgate epp --pool-name` discovering simulated replicas as pods from the
API-server double, with kubectl driving the churn and steady traffic through an Envoy stand-in.

Pods are created, made Ready, scaled 2 -> 6 -> 2; one is deleted while a long stream runs on it (the
stream finishes, no new picks); the watch connections are cut and a 410 forced (relist). Throughout:
every request succeeds, an endpoint taken away gets no pick that started more than 1 s after, and one
added gets a pick within 1 s (of when traffic starts, for the first two). Each "pod" is a simulator on
its own loopback address (127.0.0.N) and the pool's one target port, as pods share a port on different
IPs.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from kvgate.bench.ports import free_port
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble

from .conftest import Kubectl
from .eppproc import EppProc, launch_epp

sim = pytest.importorskip("kvgate.sim.server")
testing = pytest.importorskip("kvgate.extproc.testing")
pb_grpc = pytest.importorskip("envoy.service.ext_proc.v3.external_processor_pb2_grpc")

WINDOW_S = 1.0  # the issue's bound: the pick set follows the Ready pods within 1 s
# A pod the EPP had when traffic started is picked by one of the first requests (3 workers start at once,
# round robin over 2 pods: ms after the start); 0.25 s leaves room for a loaded loop.
FIRST_PICK_S = 0.25
FINALIZER = "kvgate.test/drain"  # holds a deleted pod (deletionTimestamp set) until its replica is drained


@dataclass
class Req:
    start: float
    end: float = 0.0
    picked: float = 0.0  # when the EPP's routing answer arrived (its pick lies between start and this)
    status: int = 0
    dest: str = ""
    ok: bool = False
    error: str = ""


@dataclass
class Change:
    t: float
    address: str
    added: bool


@dataclass
class Fleet:
    double: ApiServerDouble
    kubectl: Kubectl
    port: int
    replicas: dict[str, Any] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    applied: dict[str, float] = field(default_factory=dict)  # pod name -> when the double last changed it

    def __post_init__(self) -> None:
        # A kubectl-driven change is timed when the double applied it (the EPP may act on it from then),
        # not when kubectl exited (tens of ms later, more under load: review s13-k8s I1).
        def on_change(etype: str, obj: dict[str, Any]) -> None:
            if obj.get("kind") == "Pod":
                self.applied[obj["metadata"]["name"]] = self.now()

        self.double.on_change = on_change

    def address(self, i: int) -> str:
        return f"127.0.0.{10 + i}:{self.port}"

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def add(self, i: int) -> None:
        """kubectl creates the pod; the "kubelet" starts its replica, then reports podIP and Ready."""
        name = f"sim-{i}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": {"app": "sim"}, "finalizers": [FINALIZER]},
               "spec": {"containers": [{"name": "vllm", "image": "kvgate-sim"}]}}  # fmt: skip
        await self.kubectl.run("create", "-f", "-", stdin=yaml.safe_dump(pod))
        cfg = sim.ReplicaConfig(
            model="sim-model", time_scale=5.0, seed=i, host=f"127.0.0.{10 + i}", port=self.port
        )
        rep = sim.Replica(cfg, index=i)
        await rep.start()
        self.replicas[name] = rep
        status = {"status": {"phase": "Running", "podIP": f"127.0.0.{10 + i}",
                             "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
        await self.kubectl.run("patch", "pod", name, "--subresource=status", "--type=merge", "-p",
                               orjson.dumps(status).decode())  # fmt: skip
        self.changes.append(Change(self.applied[name], self.address(i), True))  # the Ready patch applied

    async def delete(self, i: int) -> None:
        """kubectl deletes the pod: the finalizer keeps it, terminating, until its replica is drained."""
        await self.kubectl.run("delete", "pod", f"sim-{i}", "--wait=false")
        self.changes.append(Change(self.applied[f"sim-{i}"], self.address(i), False))  # deletionTimestamp

    async def finish(self, i: int, load: Load) -> None:
        """Once nothing sent to it can still be running, stop the replica and let the pod go."""
        t_removed = max(c.t for c in self.changes if c.address == self.address(i) and not c.added)
        await load.drained_before(t_removed + WINDOW_S)
        await self.replicas.pop(f"sim-{i}").stop()
        await self.kubectl.run(
            "patch", "pod", f"sim-{i}", "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
        )

    def ready_now(self) -> set[str]:
        out = set()
        for pod in self.double.objects(R.POD, "default"):
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in pod.get("status", {}).get("conditions", []))  # fmt: skip
            if ready and not pod["metadata"].get("deletionTimestamp"):
                out.add(f"{pod['status']['podIP']}:{self.port}")
        return out


class Load:
    """Steady short streaming requests through the Envoy stand-in; every one is recorded."""

    def __init__(self, harness: Any, workers: int = 3) -> None:
        self.harness = harness
        self.requests: list[Req] = []
        self.pending: set[int] = set()
        self.stop = asyncio.Event()
        self.t0 = asyncio.get_running_loop().time()  # traffic runs from here
        self._seq = itertools.count()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(workers)]

    async def send(self, max_tokens: int, subset: list[str] | None = None) -> Req:
        n = next(self._seq)
        body = {"model": "sim-model", "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"request {n} " * 8}]}  # fmt: skip
        loop = asyncio.get_running_loop()
        req = Req(loop.time())
        self.requests.append(req)
        self.pending.add(id(req))
        try:
            res = await self.harness.request(
                "POST", "/v1/chat/completions", orjson.dumps(body), subset=subset
            )
            req.status, req.dest, req.picked = res.status, res.destination, res.picked
            req.ok = res.status == 200 and res.body.rstrip().endswith(b"data: [DONE]")
            if not req.ok:
                req.error = res.body[-300:].decode(errors="replace")
        except Exception as e:  # a lost request is a finding, recorded, not a crash of the load
            req.error = f"{type(e).__name__}: {e}"
        finally:
            req.end = loop.time()
            self.pending.discard(id(req))
        return req

    async def _worker(self) -> None:
        while not self.stop.is_set():
            await self.send(4)
            await asyncio.sleep(0.005)

    async def drained_before(self, t: float) -> None:
        """Wait until ``t`` has passed and every request that started before it has ended."""
        loop = asyncio.get_running_loop()
        while loop.time() < t or any(id(r) in self.pending for r in self.requests if r.start < t):  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks)


def check_window(requests: list[Req], changes: list[Change], traffic_from: float) -> None:
    """Removed endpoints get no pick started > 1 s after; added ones get one within 1 s of the add, and
    one the EPP had before traffic ran (``traffic_from``) among the first requests: by ``traffic_from +
    FIRST_PICK_S``, not a whole second after it (review s13-k8s L3: that hid up to the add's lead on the
    traffic of real delay). Change times are when the API-server double applied the change (``Fleet``).

    A request's pick is made between its start and ``picked`` (the EPP's answer), so a late pick is one
    started more than 1 s after the removal and answered before any later re-add of the address (the
    410 phase): one sent before the re-add but answered after it may have been picked after the EPP saw
    the re-add, and is no stale pick (the CI flake at 87544bb: a request started 0.24 ms after the 1.5 s
    sleep's deadline, i.e. in the loop turn that recorded the re-add; the re-add's own time is not in the
    log). An add counts picks answered after it: a re-added address's picks from before its removal say
    nothing of the re-add (they made that check pass whatever happened after the 410)."""
    for c in changes:
        if c.added:
            first = min((r.start for r in requests if r.dest == c.address and r.picked >= c.t), default=None)
            assert first is not None and first <= max(c.t + WINDOW_S, traffic_from + FIRST_PICK_S), (c, first)
        else:
            readd = min((c2.t for c2 in changes if c2.added and c2.address == c.address and c2.t > c.t),
                        default=None)  # fmt: skip
            late = [
                r for r in requests
                if r.dest == c.address and r.start > c.t + WINDOW_S and (readd is None or r.picked < readd)
            ]  # fmt: skip
            assert not late, (c, [(r.start, r.picked, r.dest) for r in late[:5]])


# The check itself, on timelines (no processes, no sleeps). The first is modelled on the CI flake at
# 87544bb: sim-3 turned unready (watch cut + 410) at 70466.388275 (from the log) and one request started at
# 70467.888516 (from the log: 0.24 ms after the 1.5 s sleep's deadline) and went to sim-3. The log has no
# re-add time: the test recorded it in the loop turn that ended the sleep, so the re-add below
# (70467.888530, 14 us after the request's start) and the request's `picked` are constructed, after the
# k8s13 trace (2 of 25 repeats: such a request sent 0.3-0.8 ms before the re-add, the EPP had the re-add
# 0.6-1.0 ms after it and picked sim-3 on current state, not a stale one).
A, B = "127.0.0.13:8000", "127.0.0.14:8000"


def test_check_window_a_request_sent_just_before_a_readd_and_picked_after_it_is_no_stale_pick() -> None:
    gone, back = Change(70466.388275319, A, False), Change(70467.888530000, A, True)  # re-add: constructed
    reqs = [Req(70466.30, 70466.31, picked=70466.301, dest=A),
            Req(70467.50, 70467.51, picked=70467.501, dest=B),
            Req(70467.888516204, 70467.898381715, picked=70467.889200, dest=A),
            Req(70467.95, 70467.96, picked=70467.951, dest=A)]  # fmt: skip
    check_window(reqs, [gone, back], traffic_from=70400.0)


def test_check_window_fails_on_a_pick_made_on_stale_state() -> None:
    gone, back = Change(100.0, A, False), Change(101.5, A, True)
    after = Req(101.6, 101.61, picked=101.601, dest=A)  # the re-add's own pick (so only staleness fails)
    stale = Req(101.2, 101.21, picked=101.201, dest=A)  # more than 1 s after, answered before the re-add
    with pytest.raises(AssertionError, match="added=False"):
        check_window([stale, after], [gone, back], traffic_from=0.0)
    with pytest.raises(AssertionError, match="added=False"):  # no re-add at all
        check_window([Req(103.0, 103.01, picked=103.001, dest=A)], [gone], traffic_from=0.0)
    # Answered just before the re-add is stale still (only a pick that may follow the re-add is forgiven).
    with pytest.raises(AssertionError, match="added=False"):
        check_window([Req(101.49, 101.5001, picked=101.4999, dest=A), after], [gone, back], traffic_from=0.0)
    # Within the 1 s window: allowed.
    check_window([Req(100.9, 100.91, picked=100.901, dest=A), after], [gone, back], traffic_from=0.0)


def test_check_window_measures_an_add_before_any_traffic_from_when_traffic_runs() -> None:
    # sim-0 was Ready 1.3 s before the load started (kubectl and the readiness wait under load): its first
    # pick cannot come sooner than the first request; the EPP had it, so one of the first requests picks it.
    added = Change(10.0, A, True)
    check_window([Req(11.35, 11.36, picked=11.351, dest=A)], [added], traffic_from=11.3)
    with pytest.raises(AssertionError):
        check_window([Req(12.4, 12.41, picked=12.401, dest=A)], [added], traffic_from=11.3)
    # Review s13-k8s L3: 0.5 s after traffic started is late for a pod Ready 1.3 s before it (passed with
    # the bound max(add, traffic start) + 1 s).
    with pytest.raises(AssertionError):
        check_window([Req(11.8, 11.81, picked=11.801, dest=A)], [added], traffic_from=11.3)
    # Added 0.3 s before traffic: still 1 s from the add.
    check_window([Req(11.9, 11.91, picked=11.901, dest=A)], [Change(11.0, A, True)], traffic_from=11.3)
    with pytest.raises(AssertionError):  # added while traffic runs: 1 s from the add
        check_window([Req(11.2, 11.21, picked=11.201, dest=A)], [added], traffic_from=9.0)


def test_check_window_a_readd_needs_a_pick_after_it_not_the_picks_from_before_the_removal() -> None:
    gone, back = Change(100.0, A, False), Change(101.5, A, True)
    before = [Req(99.0 + i / 10, 99.01 + i / 10, picked=99.001 + i / 10, dest=A) for i in range(10)]
    with pytest.raises(AssertionError, match="added=True"):  # never picked again after the re-add
        check_window(before, [gone, back], traffic_from=90.0)
    with pytest.raises(AssertionError, match="added=True"):  # picked again, but 1.2 s after the re-add
        check_window([*before, Req(102.7, 102.71, picked=102.701, dest=A)], [gone, back], traffic_from=90.0)
    # Sent just before the re-add and answered after it (the EPP had it): counts.
    check_window([*before, Req(101.4999, 101.51, picked=101.5001, dest=A)], [gone, back], traffic_from=90.0)


async def wait_for(cond: Any, within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not await cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def epp(double: ApiServerDouble, tmp_path: Path) -> AsyncIterator[EppProc]:
    proc = await launch_epp(
        double.url, tmp_path / "epp.log", "--pool-name", "llm", "--pool-namespace", "default",
        "--policy", "round-robin", "--scrape-interval", "0.1",
    )  # fmt: skip
    yield proc
    await proc.stop()


@pytest.mark.slow  # ~20 s: the 1 s windows are waited out for real (`make test-k8s` runs it)
async def test_pool_churn_through_kvgate_epp(
    double: ApiServerDouble, kubectl: Kubectl, epp: EppProc, tmp_path: Path
) -> None:
    fleet = Fleet(double, kubectl, free_port())
    pool = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "llm"},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": fleet.port}],
                     "endpointPickerRef": {"name": "llm-epp", "port": {"number": 9002}}}}  # fmt: skip
    await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(pool))
    # Ready once the pool is read, with no pod yet: the EPP answers the pool's 503 (qa33a F2)
    await wait_for(lambda: _ready(epp))
    for i in range(2):
        await fleet.add(i)
    await wait_for(lambda: _gauge(epp, 'inference_pool_ready_pods{name="llm"}', 2.0))
    ch = testing.channel(f"127.0.0.1:{epp.grpc}")
    http = aiohttp.ClientSession()
    load = Load(testing.EnvoyHarness(pb_grpc.ExternalProcessorStub(ch), http))
    try:
        await asyncio.sleep(0.5)
        for i in range(2, 6):  # scale 2 -> 6
            await fleet.add(i)
        await asyncio.sleep(WINDOW_S + 0.5)

        # A long stream pinned on sim-2; its pod is deleted mid-stream: it finishes, nothing new goes there.
        long = asyncio.create_task(load.send(3000, subset=[fleet.address(2)]))
        await asyncio.sleep(0.5)
        assert not long.done(), "the long request ended before the pod was deleted"
        await fleet.delete(2)
        t_deleted = fleet.now()
        long_req = await long
        assert long_req.ok and long_req.dest == fleet.address(2) and long_req.end > t_deleted, long_req
        await fleet.finish(2, load)

        # Watch cut + forced 410: while no watch is open, sim-3 turns unready and the history is compacted.
        lists_before = _pod_lists(double)
        double.cut_watches()
        double.set_pod_status("sim-3", ready=False)
        double.compact()
        fleet.changes.append(Change(fleet.now(), fleet.address(3), False))
        await asyncio.sleep(WINDOW_S + 0.5)
        assert _pod_lists(double) > lists_before, "the EPP did not relist after 410"
        double.set_pod_status("sim-3", ready=True)
        fleet.changes.append(Change(fleet.now(), fleet.address(3), True))
        await asyncio.sleep(WINDOW_S + 0.5)

        for i in (3, 4, 5):  # scale back to 2
            await fleet.delete(i)
        for i in (3, 4, 5):
            await fleet.finish(i, load)
        await asyncio.sleep(0.5)
    finally:
        await load.close()
        await http.close()
        await ch.close()
        for rep in fleet.replicas.values():
            await rep.stop()
    lost = [r for r in load.requests if not r.ok]
    assert not lost, [(r.status, r.dest, r.error) for r in lost[:5]]
    assert len(load.requests) > 100
    check_window(load.requests, fleet.changes, load.t0)
    assert fleet.ready_now() == {fleet.address(0), fleet.address(1)}
    assert {r.dest for r in load.requests if r.start > fleet.changes[-1].t + WINDOW_S} <= fleet.ready_now()
    # The pool gauges follow discovery (refreshed each second).
    await wait_for(lambda: _gauge(epp, 'inference_pool_ready_pods{name="llm"}', 2.0))
    await wait_for(lambda: _gauge(epp, 'llm_d_epp_ready_endpoints{name="llm"}', 2.0))
    assert "relisting" in epp.logs()


def _pod_lists(double: ApiServerDouble) -> int:
    return sum(
        1
        for r in double.requests
        if r.startswith("GET /api/v1/namespaces/default/pods?") and "watch" not in r
    )


async def _ready(epp: EppProc) -> bool:
    return (await epp.readyz())[0] == 200


async def _gauge(epp: EppProc, series: str, value: float) -> bool:
    for line in (await epp.metric(series.split("{")[0])).splitlines():
        if line.startswith(series):
            return float(line.split()[-1]) == value
    return False
