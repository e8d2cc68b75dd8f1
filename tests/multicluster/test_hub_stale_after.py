"""``--kube-stale-after`` sets the hub's member watches' stale limit (session 16): ``kvgate serve
--clusters``, ``kvgate epp --clusters`` and ``kvgate hub-controller`` log a member's InferencePool watch
stale by it (before: refused with ``--clusters``, the members logged at a fixed 120 s; review s15-k8s
F3). The not-ready limit stays refused there (the candidates are clusters). The doors in process against
API-server doubles over real HTTP; the limit scaled to 0.5 s (accepted with its WARNING), so the
members' ages run on real time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.stalepolicy import HUB, StalenessPolicy, hub_policy
from kvgate.multicluster.clusters import ClustersFile, load
from kvgate.multicluster.serve import GlobalGateway

from .kube_objects import inference_pool

NAME = "inferencepools.inference.networking.k8s.io/v1 of cluster east"
STALE, NOT_READY = "--kube-stale-after", "--kube-stale-not-ready-after"


async def _until(cond: Callable[[], bool], limit_s: float = 30.0, what: Callable[[], object] = str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, f"condition not met in time: {what()}"
        await asyncio.sleep(0.05)


def _state(reflectors: list[Any]) -> object:
    return [
        (r.name, r.watches, r.lists, r.events, r.error, r._watching, r._opening, r.age()) for r in reflectors
    ]


def _clusters(tmp_path: Path, hub: str, east: str) -> Path:
    f = tmp_path / "clusters.yaml"
    f.write_text(f"kubernetes:\n  server: {hub}\n  import: default/llama\n  controller: false\n  members:\n"
                 f"  - {{name: east, server: '{east}', rtt_ms: 5}}\n")  # fmt: skip
    return f


def _lose(member: ApiServerDouble) -> None:
    """The member's API server stops serving its InferencePools (every list and watch refused, 403, the
    open watch cut): the copy ages from its last proof. (Not ``go_away``: a re-watch racing its
    reconnect was seen to find the double serving again, under load.)"""
    member.forbid(R.INFERENCE_POOL)
    member.cut_watches()


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(f"reflector {NAME}: not in sync")
    ]


async def test_serve_clusters_logs_a_lost_member_stale_by_kube_stale_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The global gateway (``kvgate serve --clusters``' ``GlobalGateway``) with ``--kube-stale-after 0.5``:
    the member's pools lost (403), its watch is logged stale by 0.5 s, not 120 s. Fails before: no way to
    give the limit (GlobalGateway took none; the flag was refused)."""
    caplog.set_level(logging.WARNING, logger="kvgate.k8s.staleness")
    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as east_d,
    ):
        east_d.create(inference_pool("llama", "10.1.0.2:8080"))
        cfile = ClustersFile(_clusters(tmp_path, hub_d.url, east_d.url))
        gw = GlobalGateway(cfile.config, "kvgate", seed=0, staleness=hub_policy(0.5, warn=False))
        await gw.start("127.0.0.1", 0)
        try:
            await _until(lambda: list(gw.router.states) == ["east"])
            _lose(east_d)
            src = gw.source.imports
            assert src is not None
            await _until(lambda: bool(_warned(caplog)), what=lambda: _state(src._reflectors))
            assert "(stale after 0.5 s)" in _warned(caplog)[0], _warned(caplog)
        finally:
            await gw.stop()


async def test_hub_controller_logs_a_lost_member_stale_by_kube_stale_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``kvgate hub-controller``'s ``HubController`` alike. Fails before: HubController took no limit."""
    from kvgate.multicluster.hub_controller import HubController

    caplog.set_level(logging.WARNING, logger="kvgate.k8s.staleness")
    async with (
        ApiServerDouble(bookmark_interval=0.2) as hub_d,
        ApiServerDouble(bookmark_interval=0.2) as east_d,
    ):
        east_d.create(inference_pool("llama", "10.1.0.2:8080"))
        kube = load(_clusters(tmp_path, hub_d.url, east_d.url)).kubernetes
        assert kube is not None
        hc = HubController(kube, staleness=hub_policy(0.5, warn=False))
        await hc.start()
        try:
            await _until(lambda: hc.controller is not None and bool(hc.controller.exported))
            _lose(east_d)
            ctl = hc.controller
            assert ctl is not None
            await _until(lambda: bool(_warned(caplog)), what=lambda: _state(ctl._reflectors))
            assert "(stale after 0.5 s)" in _warned(caplog)[0], _warned(caplog)
        finally:
            await hc.stop()


def test_the_three_hub_doors_take_kube_stale_after_and_refuse_the_not_ready_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flag reaches each door's member watches (the policy handed over, the processes not served);
    ``--kube-stale-not-ready-after`` is refused by both commands with the same reason; a bad value is
    refused naming the flag, by ``kvgate hub-controller`` too. Fails before: ``--kube-stale-after`` was
    refused with ``--clusters`` and hub-controller had no such flag."""
    import kvgate.extproc.cli as epp_cli
    import kvgate.multicluster.serve as hub_serve
    from kvgate.extproc.cli import main as epp_main
    from kvgate.gateway.cli import main as serve_main
    from kvgate.multicluster import hub_controller

    f = str(_clusters(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9"))
    got: dict[str, Any] = {}

    def hub_run(args: Any) -> int:
        got["serve"] = args.stale_after_s
        return 0

    async def epp_serve(*_a: Any, feed: Any = None, **_k: Any) -> None:
        got["epp"] = feed.source.staleness

    monkeypatch.setattr(hub_serve, "run", hub_run)
    monkeypatch.setattr(epp_cli, "_serve", epp_serve)
    assert serve_main(["--clusters", f, STALE, "300"]) == 0
    assert epp_main(["--clusters", f, STALE, "300"]) == 0
    assert got == {"serve": 300.0, "epp": StalenessPolicy(300.0)}
    assert epp_main(["--clusters", f]) == 0 and got["epp"] == StalenessPolicy()  # (the default, 120 s)
    capsys.readouterr()

    assert serve_main(["--clusters", f, NOT_READY, "300"]) == 2
    serve_err = capsys.readouterr().err
    assert epp_main(["--clusters", f, NOT_READY, "300"]) == 2
    epp_err = capsys.readouterr().err
    assert serve_err == f"kvgate serve: config error: {NOT_READY}: {HUB}\n", serve_err
    assert epp_err == f"kvgate epp: {NOT_READY}: {HUB}\n", epp_err

    assert hub_controller.main(["--clusters", f, STALE, "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kvgate hub-controller: {STALE}: must be a finite number"), err
