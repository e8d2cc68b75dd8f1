"""The hub EPP (``kvgate epp --clusters``): an ext_proc picker whose endpoints are the clusters' gateways,
driven over real gRPC by the Envoy-side test client; and both CLIs' --clusters entry points."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.extproc.context import AddressIndex
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import ClusterDirector, connects
from kvgate.multicluster.state import ClusterState

HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})


async def test_hub_epp_picks_cluster_gateways_by_aggregate() -> None:
    specs = (ClusterSpec("east", gateway="10.1.0.2:8080"), ClusterSpec("west", gateway="10.2.0.2:8080"),
             ClusterSpec("epp-only", epp="10.3.0.2:9002"))  # fmt: skip
    cfg = ClustersConfig(specs)
    director = ClusterDirector(cfg, "kvgate", seed=0)
    now = time.monotonic()
    # west is fresh with room; east has a fresh snapshot with no ready endpoint: never picked.
    director.states["west"].set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), now)
    director.states["east"].set_aggregate(PoolAggregate("p", 1.0, 0, 2), now)
    assert set(director.states) == {"east", "west"}  # Parent mode only: no gateway, no candidate
    ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        for _ in range(3):
            async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                out = await ex.send_request(HEADERS, BODY)
            assert out.destination == "10.2.0.2:8080"
        assert director.states["west"].sent_total == 3
        director.states["west"].set_aggregate(PoolAggregate("p", 2.0, 0, 2), time.monotonic())
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
            out = await ex.send_request(HEADERS, BODY)
        assert out.status == 503  # no cluster with a ready endpoint
    finally:
        await ch.close()
        await server.stop(0)


@contextlib.asynccontextmanager
async def _west_hub(
    clock: list[float], gateway: str = "10.2.0.2:8080", others: tuple[ClusterSpec, ...] = ()
) -> AsyncIterator[tuple[ClusterDirector, ClusterState, grpc.aio.Channel]]:
    """A hub EPP over real gRPC on ``clock``, one cluster "west" (its gateway at ``gateway``) fresh with
    room (and ``others``, no aggregate: picked after west): (director, west's state, a channel to the
    EPP)."""
    cfg = ClustersConfig((ClusterSpec("west", gateway=gateway), *others))
    director = ClusterDirector(cfg, "kvgate", clock=lambda: clock[0], seed=0)
    west = director.states["west"]
    west.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), clock[0])
    ctx = SessionContext(director, AddressIndex(director.store), clock=lambda: clock[0])
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        yield director, west, ch
    finally:
        await ch.close()
        await server.stop(0)


async def _until_settled(west: ClusterState) -> None:
    """Waits (30 s at most; 5 s before) for west's sessions to end: they end on the EPP's own time."""
    for _ in range(3000):
        if west.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert west.inflight == 0


async def test_hub_epp_records_ttft_evidence_like_the_global_gateway() -> None:
    """A streamed request waits in its cluster's state from dispatch to its first SSE token (censored
    evidence), then its TTFT feeds the EWMA and the floor; a non-streamed one is counted, not timed."""
    clock = [100.0]
    sse = {"content-type": "text/event-stream"}
    streamed = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4, "stream": True})
    async with _west_hub(clock) as (_director, west, ch):
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
            out = await ex.send_request(HEADERS, streamed)
            assert out.destination == "10.2.0.2:8080"
            clock[0] += 2.5
            assert len(west.waiting) == 1 and west.oldest_wait(clock[0]) == 2.5  # censored: no token yet
            await ex.send_response_headers(200, sse)
            await ex.send_response_chunk(b'data: {"choices":[{"text":"hi"}]}\n\n')
            for _ in range(3000):  # the EPP reads the chunk on its own time: its first token, seen (30 s)
                if not west.waiting:
                    break
                await asyncio.sleep(0.01)
            clock[0] += 4.0  # first token to end: the cluster's decode time
            await ex.send_response_chunk(b"data: [DONE]\n\n", end_of_stream=True)
            async for _chunk, _eos in ex.response_body():
                pass
        assert west.ttft_floor_s == 2.5
        assert west.decode_s == 4.0  # the hub's finish carries the time, as kvgate serve --clusters' does
        assert west.waiting == {} and west.inflight == 0
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
            await ex.send_request(HEADERS, BODY)  # not streamed: its first byte is its whole answer
            assert west.waiting == {} and west.inflight == 1
            clock[0] += 9.0
            await ex.send_response(200, {"content-type": "application/json"}, [b'{"choices": []}'])
        assert west.ttft_floor_s == 2.5 and west.inflight == 0 and west.sent_total == 2


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_clis_refuse_a_bad_clusters_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("clusters: [{name: a}]\n")
    for door in ("serve", "epp"):
        rc, out = await _cli(door, "--clusters", str(bad), "--plaintext" if door == "epp" else "--port=0")
        assert rc == 2, out
        assert "gateway" in out, out  # names what is missing


async def test_clis_refuse_a_kubernetes_section_that_cannot_load(tmp_path: Path) -> None:
    """A member's kubeconfig that is not there: both doors exit 2 naming the section (no traceback)."""
    f = tmp_path / "c.yaml"
    f.write_text("kubernetes:\n  server: http://127.0.0.1:9\n  import: default/llama\n  members:\n"
                 f"  - {{name: east, kubeconfig: '{tmp_path / 'none'}'}}\n")  # fmt: skip
    for door in ("serve", "epp"):
        rc, out = await _cli(door, "--clusters", str(f), "--plaintext" if door == "epp" else "--port=0")
        assert rc == 2, out
        assert "kubernetes: cannot load" in out and "Traceback" not in out, out


async def test_clis_refuse_a_model_series_grace_not_above_zero(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("clusters: [{name: a, gateway: '127.0.0.1:9'}]\n")
    for door in ("serve", "epp"):
        extra = "--plaintext" if door == "epp" else "--port=0"
        rc, out = await _cli(door, "--clusters", str(f), extra, "--model-series-grace", "0")
        assert rc == 2, out
        assert "--model-series-grace" in out and "Traceback" not in out, out


async def _serve_banner(f: Path, *extra: str) -> str:
    """Start ``kvgate serve --clusters`` on an ephemeral port; its start line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--clusters", str(f), "--port", "0", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or "global gateway on" not in lines[-1]:  # (log lines may come first)
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, lines
            lines.append(line)
        return line
    finally:
        proc.terminate()
        await proc.wait()


async def test_serve_clusters_starts_the_global_gateway(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("clusters: [{name: a, gateway: '127.0.0.1:9'}]\n")
    line = await _serve_banner(f)
    assert "global gateway on http://127.0.0.1:" in line and "(1 cluster, policy" in line, line
    assert ":8080 " not in line  # --port 0 is an ephemeral port, not the default


async def test_serve_clusters_policy_seed_is_given_or_drawn_per_process(tmp_path: Path) -> None:
    """Two gateway processes started alike must not make the same random picks: without
    --cluster-policy-seed each draws its own (printed, to rerun alike); with it, that seed."""
    f = tmp_path / "c.yaml"
    f.write_text("clusters: [{name: a, gateway: '127.0.0.1:9'}]\n")
    assert (await _serve_banner(f, "--cluster-policy-seed", "7")).rstrip().endswith("seed 7)")
    drawn = [re.search(r"seed (\d+)\)", await _serve_banner(f)) for _ in range(2)]
    assert drawn[0] is not None and drawn[1] is not None
    assert drawn[0].group(1) != drawn[1].group(1)


def test_hub_epp_takes_a_policy_seed() -> None:
    from kvgate.extproc.cli import parser

    given = parser().parse_args(["--clusters", "c.yaml", "--cluster-policy-seed", "3"])
    assert given.cluster_policy_seed == 3
    assert parser().parse_args(["--clusters", "c.yaml"]).cluster_policy_seed is None


def test_hub_keeps_each_requests_model_from_pick_to_dispatch() -> None:
    """Another request's pick between a request's pick and its dispatch (the ext_proc sessions interleave)
    does not change what the first one's answer is judged against: it is kept per request."""
    from kvgate.scheduling.types import InferenceRequest

    clock = [100.0]
    cfg = ClustersConfig((ClusterSpec("west", gateway="10.2.0.2:8080"),))
    director = ClusterDirector(cfg, "kvgate", seed=0, clock=lambda: clock[0])
    west = director.states["west"]
    west.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), clock[0])
    west.observe_ttft(0.3, clock[0])  # its speed is measured: answers there are evidence of the model's error
    first = InferenceRequest("r1", "m", stream=True)
    second = InferenceRequest("r2", "m", stream=True)
    ep = director.pick(first).endpoints[0]
    full = PoolAggregate("p", 2.0, 2, 2, capacity=2.0, headroom=0.0, average_queue_size=8.0)
    west.set_aggregate(full, 100.0)
    director.pick(second)  # a full snapshot: a much higher load factor there for this one
    director.on_dispatched(first, ep)
    director.on_dispatched(second, ep)
    loads = list(west._load.values())
    assert len(loads) == 2 and loads[0] < loads[1]


def test_hub_forgets_a_picked_requests_model_when_it_finishes_undispatched() -> None:
    from kvgate.scheduling.types import InferenceRequest

    cfg = ClustersConfig((ClusterSpec("west", gateway="10.2.0.2:8080"),))
    director = ClusterDirector(cfg, "kvgate", seed=0, clock=lambda: 100.0)
    west = director.states["west"]
    west.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), 100.0)
    west.observe_ttft(0.3, 100.0)
    req = InferenceRequest("r1", "m", stream=True)
    ep = director.pick(req).endpoints[0]
    assert id(req) in director._loads
    director.on_finished(req, ep, None, False)  # closed before its dispatch (the client left)
    assert director._loads == {}


async def test_hub_epp_backs_a_cluster_off_only_as_the_global_router_does() -> None:
    """A cluster's gateway answering the client's request with a 4xx refusal (400, 404, 413) took the
    request, as ``kvgate serve --clusters``' router counts it (its answer is the client's): no
    back-off. A 5xx or 429 is a failure there too: the cluster backs off. Before, the hub backed a
    cluster off for every answer but a 200, so clients sending bad bodies sent the hub away from a
    healthy cluster."""
    clock = [100.0]
    error = [orjson.dumps({"error": {"message": "no", "type": "invalid_request_error"}})]
    json = {"content-type": "application/json"}
    async with _west_hub(clock) as (_director, west, ch):
        for status, fails in ((400, 0), (404, 0), (413, 0), (200, 0), (429, 1), (503, 2), (500, 3)):
            clock[0] += 60.0  # past any back-off: the cluster is picked again
            async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                out = await ex.send_request(HEADERS, BODY)
                assert out.destination == "10.2.0.2:8080"
                await ex.send_response(status, json, error if status != 200 else [b'{"choices": []}'])
            await _until_settled(west)  # the session's end runs on the EPP's own time
            assert west.failures == fails, status
            assert west.available(clock[0]) == (fails == 0 or status == 200), status


async def _until_probed(director: ClusterDirector) -> None:
    """Waits (30 s at most; 5 s before) for the hub's connect probes (``on_abandoned``) to end."""
    for _ in range(3000):
        if not getattr(director, "_probes", None):  # (getattr: runs on the code before probes too)
            break
        await asyncio.sleep(0.01)


async def test_hub_epp_does_not_back_a_cluster_off_when_the_client_leaves_before_headers() -> None:
    """Review s14-doors C: a client that disconnects while the cluster is still prefilling (Envoy cancels
    the ext_proc stream before any response headers) backed the cluster off (``on_finished`` not ok, no
    status); the global router's cancel (``given_up``) does not. The cluster's gateway takes connections
    (the hub's connect probe finds it up): no back-off."""
    clock = [100.0]
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with _west_hub(clock, f"127.0.0.1:{port}") as (director, west, ch):
            async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                out = await ex.send_request(HEADERS, BODY)
                assert out.destination == f"127.0.0.1:{port}"
                ex.cancel()  # the downstream client disconnected while the cluster was prefilling
            await _until_settled(west)
            await _until_probed(director)
            assert director._probed_at == {"west": clock[0]}  # (probed: the gateway took the connection)
            assert west.failures == 0
            assert west.available(clock[0])
            assert director._status == {}
    finally:
        listener.close()
        await listener.wait_closed()


async def test_hub_epp_backs_a_cluster_off_whose_gateway_refused_a_client_that_left() -> None:
    """Session 14's note: with fallbacks, Envoy that cannot connect to the first cluster's gateway moves
    on to the next; a client leaving before the fallback's headers cancelled the stream with no served
    address, so the first cluster's connect failure was hidden (``on_abandoned``: neither fails nor
    clears) and the hub kept sending there. Now the hub checks the gateway itself, once per
    ``PROBE_EVERY_S`` at most: two refused connections in a row, no answer between, back the cluster off
    while another cluster (east) can take its requests (review s15-labels M1)."""
    clock = [100.0]
    closed = socket.socket()  # bound, never listening: connections to it are refused
    closed.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{closed.getsockname()[1]}"
    try:
        async with _west_hub(clock, address, (ClusterSpec("east", gateway="10.1.0.2:8080"),)) as (
            director,
            west,
            ch,
        ):
            # The first refusal is a suspicion; the second leave comes within PROBE_EVERY_S (not probed
            # again); the third's probe is refused again, nothing answered between: backed off.
            for expected in (0, 0, 1):
                async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                    out = await ex.send_request(HEADERS, BODY)
                    assert out.destination.split(",")[0] == address  # (east: the fallback)
                    ex.cancel()  # the client left before any response headers
                await _until_settled(west)
                await _until_probed(director)
                assert west.failures == expected
                assert west.available(clock[0]) == (expected == 0)
                assert director._status == {}
                clock[0] += 0.5  # (the third leave: PROBE_EVERY_S after the first probe)
    finally:
        closed.close()


async def test_the_connect_probe_fails_a_gateway_that_does_not_answer_in_time() -> None:
    """``connects``: a listener that takes the connection is up; a refused port and a bad address are down."""
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        assert await connects(f"127.0.0.1:{port}")
        assert not await connects(f"127.0.0.1:{closed.getsockname()[1]}")
        assert not await connects("no-port")
        # (the timed-out branch: tests/multicluster/test_hub_probe.py, with a connect that never completes)
    finally:
        closed.close()
        listener.close()
        await listener.wait_closed()
