"""The API server goes away under a running EPP and comes back: the age gauge, the stale and recovered
log lines and the optional not-ready, on an injected clock; the EPP keeps routing on its last list."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kvgate.datalayer.store import EndpointStore
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.runtime import KubeOptions, KubePool
from kvgate.k8s.staleness import AGE_METRIC
from kvgate.k8s.stalepolicy import DEFAULT_STALE_AFTER_S, StalenessPolicy, staleness_policy

from .eppproc import EppProc, launch_epp

NS = "staleness"  # a namespace of its own: the gauge's series are per reflector name, process-wide
POOL = {
    "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
    "metadata": {"name": "llm", "namespace": NS},
    "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]},
}  # fmt: skip


def _setup(double: ApiServerDouble) -> None:
    # Bookmarks every second whatever changed (etcd's progress notify moving kube-apiserver's cache, as
    # kubeadm and GKE run it): a watch re-opened after the outage clears the error at its first bookmark.
    double.cacher_bookmarks = False
    double.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    double.create(POOL)
    meta = {"name": "a", "namespace": NS, "labels": {"app": "vllm"}}
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                   "spec": {"containers": [{"name": "c", "image": "x"}]}})  # fmt: skip
    double.set_pod_status("a", ip="10.0.0.1", ready=True, namespace=NS)


async def _until(cond: Callable[[], bool], within_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(AGE_METRIC, {"name": name})


def _lines(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


async def test_a_lost_api_server_is_measured_logged_and_made_not_ready_then_recovers(
    double: ApiServerDouble, caplog: pytest.LogCaptureFixture
) -> None:
    """Fails before: no age, no gauge, no log and no policy (KubeOptions had no ``staleness``): the EPP
    routed on its last list forever, ready, with nothing said after the reflectors' first error."""
    _setup(double)
    now = [1000.0]
    policy = StalenessPolicy(stale_after_s=120.0, not_ready_after_s=300.0)
    store = EndpointStore()
    kp = KubePool(KubeOptions("llm", NS, server=double.url, staleness=policy), store, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="kvgate.k8s.staleness")
    await kp.start()
    try:
        await _until(lambda: kp.problem() is None)
        assert kp.discovery is not None and kp.staleness is not None
        pool, pods = kp.discovery.pool_reflector, kp.discovery.pod_reflector
        assert pods.age() == 0.0 and _gauge(pods.name) == 0.0 and _gauge(pool.name) == 0.0

        await double.go_away()
        await _until(lambda: pods.error is not None and pool.error is not None)  # they noticed and retry
        now[0] += 119.0
        kp.staleness.check()
        assert _gauge(pods.name) == 119.0 and not _lines(caplog, logging.WARNING, "not in sync")
        now[0] += 2.0
        kp.staleness.check()
        kp.staleness.check()  # once per going stale, not per check
        warned = _lines(caplog, logging.WARNING, f"reflector {pods.name}: not in sync with the API server")
        assert len(warned) == 1 and "for 121 s" in warned[0] and "(1 objects)" in warned[0], warned
        assert "last error: connection to" in warned[0], warned
        assert pods in kp.staleness.stale() and pool in kp.staleness.stale()
        # Still ready below the not-ready limit, routing on the last list.
        assert kp.problem() is None and {e.address for e in store.all()} == {"10.0.0.1:8000"}
        now[0] += 180.0
        assert _gauge(pods.name) == 301.0
        problem = kp.problem()
        assert problem is not None and "not in sync with the API server for 301 s (> 300 s)" in problem

        await double.come_back()
        # Every reflector (not only the pool's and the pods': the others were stale too, and one still in
        # its back-off at load 13 was left in stale()), within a back-off.
        every = kp.staleness.reflectors
        await _until(lambda: all(r.age() == 0.0 and r.error is None for r in every), within_s=30.0)
        kp.staleness.check()
        assert kp.problem() is None and _gauge(pods.name) == 0.0 and not kp.staleness.stale()
        back = _lines(caplog, logging.INFO, f"reflector {pods.name}: in sync with the API server again")
        assert len(back) == 1 and "(301 s since it last was)" in back[0], back
        assert pods.error is None and pool.error is None
    finally:
        await kp.stop()
    assert _gauge(pods.name) is None  # a stopped reflector leaves the gauge


async def test_by_default_a_stale_copy_is_logged_but_the_epp_stays_ready(double: ApiServerDouble) -> None:
    """The default policy: routing on the last list beats refusing when every replica lost the API server;
    the data layer still drops endpoints whose own scrapes fail (kvgate.datalayer.health)."""
    _setup(double)
    now = [0.0]
    kp = KubePool(KubeOptions("llm", NS, server=double.url), EndpointStore(), clock=lambda: now[0])
    await kp.start()
    try:
        await _until(lambda: kp.problem() is None)
        assert kp.staleness is not None and kp.staleness.policy.stale_after_s == DEFAULT_STALE_AFTER_S == 120
        await double.go_away()
        assert kp.discovery is not None
        pool, pods = kp.discovery.pool_reflector, kp.discovery.pod_reflector
        await _until(lambda: pods.error is not None and pool.error is not None)  # (an open watch is in sync)
        now[0] += 3600.0
        kp.staleness.check()
        assert kp.staleness.stale() and kp.problem() is None
    finally:
        await kp.stop()


def test_kvgate_serve_takes_the_flags() -> None:
    from kvgate.config.gateway import GatewayConfigError
    from kvgate.gateway.cli import _parser, build_config

    base = ["--pool-name", "llm", "--model", "m"]
    cfg = build_config(
        _parser().parse_args([*base, "--kube-stale-after", "30", "--kube-stale-not-ready-after", "60"])
    )
    assert staleness_policy(cfg.kube_stale_after_s, cfg.kube_stale_not_ready_after_s) == StalenessPolicy(
        30, 60
    )
    cfg = build_config(_parser().parse_args(base))
    assert staleness_policy(cfg.kube_stale_after_s, cfg.kube_stale_not_ready_after_s) == StalenessPolicy()
    with pytest.raises(GatewayConfigError):
        build_config(_parser().parse_args([*base, "--kube-stale-after", "0"]))


def test_the_flags_policy() -> None:
    assert staleness_policy(None, 0.0) == StalenessPolicy(DEFAULT_STALE_AFTER_S, None)
    assert staleness_policy(30.0, 60.0) == StalenessPolicy(30.0, 60.0)
    for bad in ((0.0, 0.0), (10.0, -1.0)):
        with pytest.raises(ValueError):
            staleness_policy(*bad)


async def _readyz_until(epp: EppProc, status: int, within_s: float = 60.0) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    got = await epp.readyz()
    while got[0] != status and loop.time() < end:
        await asyncio.sleep(0.05)
        got = await epp.readyz()
    return got


@pytest.mark.slow
async def test_the_epp_reports_not_ready_while_its_api_server_is_gone(
    double: ApiServerDouble, tmp_path: Path
) -> None:
    """``kvgate epp --kube-stale-not-ready-after``: /readyz turns 503 with the reason, the gauge and the
    log say it, and all of it recovers when the API server is back (real time: a subprocess)."""
    _setup(double)
    epp = await launch_epp(double.url, tmp_path / "epp.log", "--pool-name", "llm", "--pool-namespace", NS,
                           "--kube-stale-after", "0.5", "--kube-stale-not-ready-after", "1")  # fmt: skip
    try:
        assert (await _readyz_until(epp, 200))[0] == 200
        await double.go_away()
        status, text = await _readyz_until(epp, 503)
        assert status == 503 and "not in sync with the API server" in text, (status, text)
        gauge = await epp.metric(AGE_METRIC)
        assert f'{AGE_METRIC}{{name="pods.core/v1 in {NS}"}}' in gauge, gauge
        await double.come_back()
        assert (await _readyz_until(epp, 200))[0] == 200
        await _until(
            lambda: "in sync with the API server again" in epp.logs()
        )  # logged at the next check (every 0.125 s)
        logs = epp.logs()
        assert "not in sync with the API server" in logs and "in sync with the API server again" in logs, (
            logs[-3000:]
        )
    finally:
        assert await epp.stop() == 0
