"""What a clusters-file reload and a certificate rotation change in a running global gateway (issue #14).

Real gRPC (``kvgate epp`` in process, mutual TLS where it matters) and real HTTP on loopback:
- a rotated client certificate (same paths, new content) is used by the next EPP stream after the check
  interval, without a restart; until then the channel in use stays;
- a cluster removed from the clusters file: its EPP channel takes no new stream, the stream already open
  through it finishes whole, then the channel is closed;
- the file's ``limits:`` apply live (body cap, connection cap);
- the aggregate fetcher picks up rotated client certificates too.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest

from gateway.backend import Backend
from kvgate.bench.ports import free_port
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc import tls
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClustersFile, ClusterSpec, TlsOptions
from kvgate.multicluster.epp_client import EppClient
from kvgate.multicluster.export import aggregate_source
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.serve import GlobalGateway
from kvgate.multicluster.state import ClusterState


async def _epp(pods: list[str], **opts: object) -> EppServer:
    store = EndpointStore.from_addresses(pods, pool="c")
    director = build_epp_director(None, store, policy="round-robin")
    ctx = SessionContext(director, AddressIndex(store), clock=time.monotonic)
    source = aggregate_source("c", store.all, director, tls=bool(opts.get("metrics_tls")), mtls=True)
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, **opts),  # type: ignore[arg-type]
                       aggregate=source.body)  # fmt: skip
    await server.start()
    return server


async def _until(cond: Callable[[], bool], limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _write(path: Path, text: str) -> None:
    """Rewrite with an mtime that surely differs (a reload is keyed on it)."""
    before = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(text)
    os.utime(path, (before + 10, before + 10))


async def test_a_rotated_client_certificate_is_used_without_a_restart(tmp_path: Path) -> None:
    server, old, new = (tls.self_signed(n) for n in (("localhost", "127.0.0.1"), ("gw-old",), ("gw-new",)))
    epp = await _epp(["127.0.0.1:1"], metrics_port=None, tls=server, client_ca=new.cert_pem)  # trusts `new`
    for name, pem in (("ca.pem", server.cert_pem), ("c.pem", old.cert_pem), ("c.key", old.key_pem)):
        (tmp_path / name).write_bytes(pem)
    opts = TlsOptions(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    now = [0.0]
    client = EppClient(timeout_s=5.0, clock=lambda: now[0], cert_check_s=5.0)
    address = f"127.0.0.1:{epp.port}"
    try:
        with pytest.raises(grpc.aio.AioRpcError):  # the EPP refuses the old client certificate
            await client.open(address, "/v1/completions", {}, b'{"model":"m","prompt":"x"}', tls=opts)
        # The Secret is rotated: same paths, new content.
        (tmp_path / "c.pem").write_bytes(new.cert_pem)
        (tmp_path / "c.key").write_bytes(new.key_pem)
        now[0] = 1.0  # within the check interval: the channel in use stays (and still fails)
        with pytest.raises(grpc.aio.AioRpcError):
            await client.open(address, "/v1/completions", {}, b'{"model":"m","prompt":"x"}', tls=opts)
        assert client.rotations == 0
        now[0] = 6.0
        stream = await client.open(address, "/v1/completions", {}, b'{"model":"m","prompt":"x"}', tls=opts)
        assert stream.address == "127.0.0.1:1"
        stream.cancel()
        assert client.rotations == 1
        await _until(lambda: client.closed == 1)  # the old channel had no open stream: closed at once
    finally:
        await client.close()
        await epp.stop(0)


def _clusters_yaml(epp: str, gateway: str, limits: str = "") -> str:
    return f"clusters:\n- {{name: {epp.split(':')[1]}, epp: '{epp}', gateway: '{gateway}'}}\n{limits}"


async def test_a_removed_clusters_channel_closes_after_its_open_stream_finishes(tmp_path: Path) -> None:
    pod1 = await Backend("pod1", tokens=30, chunk_delay=0.05).start()  # a 1.5 s stream
    pod2 = await Backend("pod2", tokens=2).start()
    epp1, epp2 = await _epp([pod1.address], metrics_port=None), await _epp([pod2.address], metrics_port=None)
    e1, e2 = f"127.0.0.1:{epp1.port}", f"127.0.0.1:{epp2.port}"
    f = tmp_path / "clusters.yaml"
    _write(f, _clusters_yaml(e1, pod1.address))
    cfile = ClustersFile(f, check_every_s=0.05)
    gw = GlobalGateway(cfile.config, "round-robin", clusters_file=cfile, fetch=False)
    await gw.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 30, "stream": True})
    epp_client = gw.router.epp
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body) as r:
                assert r.headers["x-kvgate-route-mode"] == "endpoint"
                await r.content.readuntil(b"\n\n")  # streaming through cluster 1's EPP
                _write(f, _clusters_yaml(e2, pod2.address))  # cluster 1 leaves the file
                await _until(lambda: list(gw.router.states) == [e2.split(":")[1]])
                assert epp_client.closed == 0  # retired, not closed: its stream is still open
                rest = await r.read()
            assert rest.endswith(b"data: [DONE]\n\n") and rest.count(b"data: {") == 29  # whole, not cut
            assert gw.metrics.cut.labels(e1.split(":")[1])._value.get() == 0
            await _until(lambda: epp_client.closed == 1)  # its last stream ended: the channel closed
            async with http.post(url, data=body) as r2:
                assert r2.status == 200 and r2.headers["x-kvgate-cluster"] == e2.split(":")[1]
                await r2.read()
            assert epp_client.closed == 1  # cluster 2's channel stays open
    finally:
        await gw.stop()
        for e in (epp1, epp2):
            await e.stop(0)
        for p in (pod1, pod2):
            await p.stop()


async def test_the_clusters_files_limits_apply_live(tmp_path: Path) -> None:
    pod = await Backend("gw", tokens=2).start()
    f = tmp_path / "clusters.yaml"
    _write(f, f"clusters:\n- {{name: c, gateway: '{pod.address}'}}\n")
    cfile = ClustersFile(f, check_every_s=0.05)
    gw = GlobalGateway(cfile.config, "round-robin", clusters_file=cfile, fetch=False)
    await gw.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    big = orjson.dumps({"model": "m", "prompt": "x" * 600, "max_tokens": 2})
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=big) as r:
                assert r.status == 200
            _write(f, f"clusters:\n- {{name: c, gateway: '{pod.address}'}}\n"
                      "limits: {maxBodyBytes: 512, maxConnections: 1}\n")  # fmt: skip
            assert gw.front is not None
            await _until(lambda: gw.front is not None and gw.front.max_body == 512)
            async with http.post(url, data=big) as r:
                assert r.status == 413
                assert "exceeds 512 bytes" in (await r.json())["error"]["message"]
        # One connection held open; the next is refused with the front's 503.
        held = socket.create_connection(("127.0.0.1", gw.port))
        try:
            await _until(lambda: gw.front is not None and len(gw.front.connections) == 1)
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            head = await asyncio.wait_for(reader.read(4096), 30)
            assert head.startswith(b"HTTP/1.1 503") and b"too_many_connections" in head
            writer.close()
        finally:
            held.close()
    finally:
        await gw.stop()
        await pod.stop()


async def test_the_aggregate_fetcher_picks_up_a_rotated_client_certificate(tmp_path: Path) -> None:
    server, old, new = (tls.self_signed(n) for n in (("localhost", "127.0.0.1"), ("gw-old",), ("gw-new",)))
    epp = await _epp(["127.0.0.1:1"], metrics_port=0, tls=server, client_ca=new.cert_pem, metrics_tls=True)
    for name, pem in (("ca.pem", server.cert_pem), ("c.pem", old.cert_pem), ("c.key", old.key_pem)):
        (tmp_path / name).write_bytes(pem)
    opts = TlsOptions(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    url = f"https://127.0.0.1:{epp.metrics_port}/v1/pool/aggregate"
    st = ClusterState(ClusterSpec("c", aggregate=url, gateway="h:1"))
    fetcher = Fetcher(lambda: [st], tls=opts, interval_s=60)
    await fetcher.start()
    try:
        assert st.aggregate is None and st.fetch_error  # the old certificate is refused
        (tmp_path / "c.pem").write_bytes(new.cert_pem)
        (tmp_path / "c.key").write_bytes(new.key_pem)
        fetcher.cert_check_s = 0.0
        await fetcher.refresh()
        assert st.aggregate is not None and st.aggregate.mtls, st.fetch_error
    finally:
        await fetcher.stop()
        await epp.stop(0)


async def test_the_fetchers_rounds_run_in_one_loop() -> None:
    """However many rounds run, one refresh loop (a round once started a new one), none after stop."""
    fetcher = Fetcher(lambda: [], interval_s=0.02)
    await fetcher.start()
    try:
        await _until(lambda: fetcher.rounds >= 6)
        assert len(_loops()) == 1
    finally:
        await fetcher.stop()
    assert _loops() == []


def _loops() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if not t.done()
            and getattr(t.get_coro(), "__qualname__", "") == "Fetcher._loop"]  # fmt: skip


async def test_the_fetcher_closes_the_health_channel_of_a_removed_cluster() -> None:
    health = f"127.0.0.1:{free_port()}"  # nothing listens: the check fails, the channel exists
    states = [ClusterState(ClusterSpec("c", gateway="h:1", health=health))]
    fetcher = Fetcher(lambda: states, interval_s=60, timeout_s=0.5)
    await fetcher.start()
    try:
        assert states[0].healthy is False and list(fetcher._channels) == [health]
        channel = fetcher._channels[health]
        states.clear()  # the clusters file lost it
        await fetcher.refresh()
        assert fetcher._channels == {}
        assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN
    finally:
        await fetcher.stop()
