"""qa25 F4: the global gateway (``kvgate serve --clusters``, Parent mode) re-sends a request to the next
cluster after the first cluster's gateway answered ``504 upstream_timeout``, i.e. after that gateway had
*written* the request to a model server and waited ``requestTimeoutSeconds`` for it. ``kvgate serve``
itself never retries such a request ("A timeout once the request was written is not retried: the server
accepted it and may [run it] ... turn slow answers into more load", docs/gateway.md "Retries"); one level
up the hub does exactly that, so every request that times out in an overloaded cluster is prefilled again
in the next one (and the client waits the first bound plus the whole second run: 2 s + 6 s here).

The test starts on loopback (ports 0, each process's own read from its start line): ``kvgate sim`` (2
replicas), a ``kvgate serve`` per
cluster (east: replica 0, ``requestTimeoutSeconds: 1``; west: replica 1) and the hub with
``--cluster-policy active-passive`` (east first), sends one request whose prefill outlasts east's bound,
and expects the client to get east's 504 with west's model server untouched. All processes are killed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import start_lines
from gateway.handler_server import serve_app
from kvgate.lifeline import die_with_parent_argv
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

SIM = re.compile(
    r"replica 0: http://127\.0\.0\.1:(\d+)(?=\D)[\s\S]*?replica 1: http://127\.0\.0\.1:(\d+)(?=\D)"
)


def _requests_seen(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(
            ("vllm:request_success_total", "vllm:num_requests_running", "vllm:num_requests_waiting")
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[dict[str, int]]:
    """The ports: ``sim1`` (west's model server) and ``hub`` (the global gateway's data port)."""
    k = [sys.executable, "-m", "kvgate.cli"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, line: re.Pattern[str], *cmd: str) -> tuple[int, ...]:
        # (stdout alone: ``kvgate sim`` prints its replica lines in two writes each under PYTHONUNBUFFERED,
        # and a log line written to the same file between them would splice the port)
        out = tmp_path / f"{name}.log"
        with out.open("wb") as stdout, (tmp_path / f"{name}.err").open("wb") as stderr:
            procs.append(subprocess.Popen(die_with_parent_argv([*k, *cmd]), stdout=stdout, stderr=stderr))
        return start_lines.ports(out, line, procs[-1])

    try:
        sim0, sim1 = start("sim", SIM, "sim", "--replicas", "2", "--base-port", "0", "--model", "m1",
                           "--time-scale", "0.05")  # fmt: skip
        (tmp_path / "east.yaml").write_text(
            f'pools: [{{name: p, endpoints: ["127.0.0.1:{sim0}"], models: [m1]}}]\nlimits: {{requestTimeoutSeconds: 1}}\n'  # noqa: E501
        )
        (tmp_path / "west.yaml").write_text(
            f'pools: [{{name: p, endpoints: ["127.0.0.1:{sim1}"], models: [m1]}}]\n'
        )
        serve = ["serve", "--port", "0", "--admin-port", "0"]
        east, east_admin = start("east", start_lines.SERVE, *serve, "--config", str(tmp_path / "east.yaml"))
        west, west_admin = start("west", start_lines.SERVE, *serve, "--config", str(tmp_path / "west.yaml"))
        (tmp_path / "clusters.yaml").write_text(
            "ttl_s: 3.0\nrefresh_s: 0.5\nclusters:\n"
            f"- {{name: east, aggregate: 'http://127.0.0.1:{east_admin}/v1/pool/aggregate', gateway: '127.0.0.1:{east}', priority: 0}}\n"  # noqa: E501
            f"- {{name: west, aggregate: 'http://127.0.0.1:{west_admin}/v1/pool/aggregate', gateway: '127.0.0.1:{west}', priority: 1}}\n"  # noqa: E501
        )
        hub, hub_admin = start("hub", start_lines.HUB, *serve, "--clusters", str(tmp_path / "clusters.yaml"),
                               "--cluster-policy", "active-passive")  # fmt: skip
        # both clusters usable in the hub's eyes (fresh aggregates with a ready endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{hub_admin}/readyz", timeout=30).status
            except urllib.error.HTTPError as e:  # (503 while no cluster is ready yet)
                body = e.code
            agg = json.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{east_admin}/v1/pool/aggregate", timeout=30).read()
            )
            if body == 200 and agg["ready_endpoints"] == 1:
                break
            assert time.monotonic() < deadline, "clusters never ready"
            time.sleep(0.2)
        yield {"sim1": sim1, "hub": hub}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(30)


def test_a_clusters_504_after_the_request_was_written_is_not_resent(fleet: dict[str, int]) -> None:
    before = _requests_seen(fleet["sim1"])
    prompt = "u" * 20000  # a prefill of several seconds on the simulator: past east's 1 s bound
    req = urllib.request.Request(
        f"http://127.0.0.1:{fleet['hub']}/v1/chat/completions",
        data=json.dumps(
            {"model": "m1", "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]}
        ).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, cluster = r.status, r.headers.get("x-kvgate-cluster")
    except urllib.error.HTTPError as e:
        status, cluster = e.code, e.headers.get("x-kvgate-cluster")
    after = _requests_seen(fleet["sim1"])
    assert after == before, (
        f"west's model server got the request after east's gateway had written it and timed out "
        f"(client: {status} from {cluster})"
    )
    assert (status, cluster) == (504, "east"), (status, cluster)


# --- fixqa25: in process, real HTTP on loopback -----------------------------------------------------------
async def test_a_clusters_504_reaches_the_client_and_backs_the_cluster_off(pods) -> None:
    """East's gateway answers ``504 upstream_timeout`` (as ``kvgate serve`` does after writing the request):
    the client gets that 504, west's pod is not sent the request, and east backs off, so the next request
    goes to west first. A 503 (nothing written) still fails over (the rule's other side)."""
    said = {"status": 504}

    async def east_gateway(_req: web.Request) -> web.Response:
        code = "upstream_timeout" if said["status"] == 504 else "upstream_unavailable"
        body = {"error": {"message": "east timed out", "type": "x", "param": None, "code": code}}
        return web.json_response(body, status=said["status"])

    app = web.Application()
    app.router.add_post("/v1/completions", east_gateway)
    runner, east_port = await serve_app(app)
    west = await pods()
    clusters = (ClusterSpec("east", gateway=f"127.0.0.1:{east_port}", priority=0),
                ClusterSpec("west", gateway=west.address, priority=1))  # fmt: skip
    gw = GlobalGateway(ClustersConfig(clusters), "active-passive", fetch=False, seed=1)
    await gw.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=b'{"model":"m","prompt":"x"}') as r:
                first = r.status, r.headers.get("x-kvgate-cluster"), await r.json()
            assert first[:2] == (504, "east"), first
            assert first[2]["error"]["code"] == "upstream_timeout", first
            assert not west.received, "west's pod was sent the request east's gateway had timed out"
            assert not gw.router.states["east"].available(gw.clock()), "east not backed off"
            async with http.post(url, data=b'{"model":"m","prompt":"x"}') as r:
                assert (r.status, r.headers.get("x-kvgate-cluster")) == (200, "west")
            gw.router.states["east"].succeeded()  # (back in front)
            said["status"] = 503
            async with http.post(url, data=b'{"model":"m","prompt":"x"}') as r:
                assert (r.status, r.headers.get("x-kvgate-cluster")) == (200, "west")
            assert len(west.received) == 2
    finally:
        await gw.stop()
        await runner.cleanup()
