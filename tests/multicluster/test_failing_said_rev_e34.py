"""rev-e34 findings on fixqa34b (d38c27ae): F1 the kvgate.io/aggregate annotation checked, F2 a refusal
does not hide the failing fetches after it, F3 a cluster found hung warned at both doors, F4 the fleet
simulator quiet. Each failed before fixreve34."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec, ParentRef
from kvgate.multicluster.imports import EXPORT_ANNOTATION, ImportController, Member
from kvgate.multicluster.serve import GlobalGateway
from multicluster.east_aggregate import east_fetching

KEY = ("default", "llama")


def _pool_with(ann: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "llama", "namespace": "default",
                         "annotations": {EXPORT_ANNOTATION: "ClusterSet", **ann}}}  # fmt: skip


@pytest.mark.parametrize("bad", ["10.2.0.2:9090/v1/pool/aggregate", "ftp://10.2.0.2:9090/v1/pool/aggregate"])
def test_f1_an_exported_pools_aggregate_annotation_is_checked_as_the_clusters_file_checks_it(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    """rev-e34-F1: the clusters file now refuses these (qa34b-F1); the kubernetes: section's
    kvgate.io/aggregate annotation passes them on unchecked, silently, as the file did before."""
    caplog.set_level(logging.WARNING, logger="kvgate.multicluster.imports")
    members = [Member("west", None)]  # type: ignore[arg-type]
    ctl = ImportController(None, members, follow=KEY, parent=ParentRef("gateways", "global"),
                           parent_mode_only=True, writes=False)  # fmt: skip
    ctl.exported[KEY] = {
        "west": _pool_with({"kvgate.io/gateway": "10.2.0.2:8080", "kvgate.io/aggregate": bad})
    }
    (west,) = ctl.clusters_for(KEY)
    assert west.aggregate is None, f"annotation {bad!r} passed on as the aggregate URL"
    warned = [r.getMessage() for r in caplog.records if "kvgate.io/aggregate" in r.getMessage()]
    assert len(warned) == 1 and "ignored" in warned[0], caplog.text
    ctl.clusters_for(KEY)  # (the same value again: logged once)
    assert len([r for r in caplog.records if "kvgate.io/aggregate" in r.getMessage()]) == 1
    good = "http://10.2.0.2:9090/v1/pool/aggregate"
    ctl.exported[KEY] = {
        "west": _pool_with({"kvgate.io/gateway": "10.2.0.2:8080", "kvgate.io/aggregate": good})
    }
    (west,) = ctl.clusters_for(KEY)
    assert west.aggregate == good


GOOD = (b'{"name":"p","snapshot_time":1.0,"ready_endpoints":1,"total_endpoints":1,"capacity":1.0,'
        b'"headroom":1.0,"request_slots":4.0,"metrics_age_s":0.1}')  # fmt: skip


async def test_f2_a_refused_answer_does_not_hide_the_failing_streak_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rev-e34-F2: one malformed answer (refused: its WARNING), then the aggregate 404s for good (a wrong
    path after a redeploy): that streak says nothing, however long, as ``said`` holds the refusal."""
    state: dict[str, bytes | None] = {"body": b"{not json"}

    async def handle(_req: web.Request) -> web.Response:
        if state["body"] is None:
            return web.Response(status=404)
        return web.Response(body=state["body"], content_type="application/json")

    caplog.set_level(logging.INFO, "kvgate.multicluster.fetcher")
    async with east_fetching(handle) as (st, fetcher, _url):
        await fetcher.start()  # (refused: one WARNING)
        refused = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(refused) == 1 and "refused" in refused[0].getMessage(), caplog.text
        state["body"] = None
        for _ in range(5):
            await fetcher.refresh()
        assert st.fetch_error == "HTTP 404"
        warned = [
            r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "404" in r.getMessage()
        ]
        assert warned, "five 404s in a row after a refused answer: no WARNING names the 404\n" + caplog.text


async def test_f3_the_hub_epp_warns_a_cluster_found_hung(caplog: pytest.LogCaptureFixture) -> None:
    """rev-e34-F3: docs/multicluster.md and CHANGELOG (fixqa34b): a WARNING 'at once when the cluster is
    found hung ... Both doors'. The hub EPP charges the cut (st.failed, hung_at still None: 1 failure, no
    line) and marks hung_at after its probe without calling failed again: no WARNING. A hung cluster is
    then left out by every policy, so no 3rd failure ever comes: the streak is never warned."""
    from multicluster.test_hub_request_timeout import BODY, HEADERS, _hub, _until

    caplog.set_level(logging.INFO, "kvgate.multicluster")
    async with _hub(0.6, healthz_delay_s=5.0) as (director, west, health, ex):
        await ex.send_request(HEADERS, BODY)
        reply = await ex.read()
        assert reply.immediate_response.status.code == 504
        await _until(lambda: health.probes == 1, "not probed")
        await _until(lambda: not director._live_probes, "the probe did not end")
        assert west.hung_at is not None  # (found hung: INFO '...: hung' logged)
        warned = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.WARNING and "cluster west failing" in r.getMessage()]  # fmt: skip
        assert warned, "hung cluster, no WARNING:\n" + caplog.text[-2000:]
        assert "found hung" in warned[0] and len(warned) == 1, warned


def test_f4_the_fleet_simulator_writes_no_failing_cluster_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """rev-e34-F4 (low): kvgate.bench.multicluster's virtual gateways call ClusterState.failed (no why) on
    a virtual clock; with no logging set up, logging.lastResort prints 'cluster west failing: 3 attempts
    in a row failed (last: unknown); backing off ...' to the benchmark's stderr, once per virtual gateway."""
    pytest.importorskip("numpy")
    from kvgate.bench.multicluster import MultiClusterSim, RunConfig, Workload

    tiny = Workload(tenants=4, system_prompt_len=256, question_len=32, output_len=16)
    MultiClusterSim(RunConfig("llm-d-hub", 20.0, duration=9.0, warmup=1.0, loss=True, workload=tiny)).run()
    # (under pytest a handler is set, so lastResort is not used: the records stand for the stderr lines;
    # outside pytest: python -c "...MultiClusterSim(...).run()" prints them, 2 lines for this run)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warned, warned


async def test_f3b_the_global_gateway_warns_a_cluster_found_hung_after_its_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rev-e34-F3 on ``kvgate serve --clusters``: east (an aggregate fetched) takes the request and sends
    no head; the bound (1 s) cuts it and charges east (1 failure, backing off 1 s); its probe (bound 0.3 s,
    /healthz silent) finds it hung 0.3 s later, inside the back-off, so ``failed`` is not called: hung,
    no WARNING, and a hung cluster gets no more attempts to reach the 3rd failure."""
    from kvgate.datalayer.aggregate import PoolAggregate
    from multicluster.test_request_timeout import Gateway, _post

    caplog.set_level(logging.INFO, "kvgate.multicluster")
    east = await Gateway("east", "silent").start()
    east.healthz_delay_s = 5.0
    gw = GlobalGateway(ClustersConfig((ClusterSpec("east", gateway=east.address),), head_timeout_s=30.0,
                                      probe_timeout_s=0.3, request_timeout_s=1.0),
                       "round-robin", fetch=False, seed=1, drain_s=0.5)  # fmt: skip
    await gw.start("127.0.0.1", 0)
    try:
        st = gw.router.states["east"]
        st.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), gw.clock())
        status, _data, _ = await _post(gw.port)
        assert status == 504
        for _ in range(300):  # (30 s: the probe's verdict, a state)
            if st.hung_at is not None:
                break
            await asyncio.sleep(0.1)
        assert st.hung_at is not None
        warned = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.WARNING and "cluster east failing" in r.getMessage()]  # fmt: skip
        assert warned, "hung cluster, no WARNING:\n" + caplog.text[-2000:]
        assert "found hung" in warned[0] and len(warned) == 1, warned
    finally:
        await gw.stop()
        await east.stop()
