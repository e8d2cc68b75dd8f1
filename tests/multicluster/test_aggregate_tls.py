"""The pool aggregate over HTTPS and mutual TLS: ``kvgate epp``'s metrics port with --metrics-tls, fetched
by the global gateway's fetcher with the clusters file's ``tls`` options."""

from __future__ import annotations

import time
from pathlib import Path

from kvgate.datalayer.store import EndpointStore
from kvgate.extproc import tls
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec, TlsOptions
from kvgate.multicluster.export import aggregate_source
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.state import ClusterState


async def _fetch(url: str, opts: TlsOptions) -> ClusterState:
    st = ClusterState(ClusterSpec("east", aggregate=url, gateway="h:1"))
    f = Fetcher(lambda: [st], tls=opts, interval_s=60)
    await f.start()
    await f.stop()
    return st


async def test_aggregate_over_mutual_tls(tmp_path: Path) -> None:
    server, client = tls.self_signed(("localhost", "127.0.0.1")), tls.self_signed(("gateway",))
    store = EndpointStore.from_addresses(["127.0.0.1:1"], pool="east")
    director = build_epp_director(None, store, policy="kvgate")
    ctx = SessionContext(director, AddressIndex(store), clock=time.monotonic)
    source = aggregate_source("east", store.all, director, tls=True, mtls=True)
    opts = ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=0, tls=server,
                         client_ca=client.cert_pem, metrics_tls=True)  # fmt: skip
    epp = EppServer(ctx, opts, aggregate=source.body)
    await epp.start()
    for name, pem in (("ca.pem", server.cert_pem), ("c.pem", client.cert_pem), ("c.key", client.key_pem)):
        (tmp_path / name).write_bytes(pem)
    url = f"https://127.0.0.1:{epp.metrics_port}/v1/pool/aggregate"
    try:
        ok = await _fetch(
            url, TlsOptions(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
        )
        assert ok.aggregate is not None and ok.aggregate.tls and ok.aggregate.mtls, ok.fetch_error
        no_cert = await _fetch(url, TlsOptions(str(tmp_path / "ca.pem")))
        assert no_cert.aggregate is None and no_cert.fetch_error  # refused without a client certificate
        plain = await _fetch(url.replace("https", "http"), TlsOptions())
        assert plain.aggregate is None
    finally:
        await epp.stop(0)


async def test_endpoint_mode_over_mutual_tls(tmp_path: Path) -> None:
    """A cluster with ``epp_tls: true``: the EPP is verified against the clusters file's ``tls.ca`` and
    given its client pair; without the client pair the EPP refuses the stream (and that cluster fails)."""
    import aiohttp
    import orjson

    from gateway.backend import Backend
    from kvgate.multicluster.clusters import ClustersConfig
    from kvgate.multicluster.serve import GlobalGateway

    server, client = tls.self_signed(("localhost", "127.0.0.1")), tls.self_signed(("gateway",))
    for name, pem in (("ca.pem", server.cert_pem), ("c.pem", client.cert_pem), ("c.key", client.key_pem)):
        (tmp_path / name).write_bytes(pem)
    pod = await Backend("pod").start()
    store = EndpointStore.from_addresses([pod.address])
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic)  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None,
                                       tls=server, client_ca=client.cert_pem))  # fmt: skip
    await epp.start()
    cluster = ClusterSpec("c1", epp=f"127.0.0.1:{epp.port}", epp_tls=True)
    full = TlsOptions(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    try:
        for opts, want in ((full, 200), (TlsOptions(str(tmp_path / "ca.pem")), 503)):
            gw = GlobalGateway(ClustersConfig((cluster,), tls=opts), "round-robin", fetch=False)
            await gw.start("127.0.0.1", 0)
            try:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                async with aiohttp.ClientSession() as s, s.post(url, data=body) as r:
                    assert r.status == want, await r.text()
                    if want == 200:
                        assert r.headers["x-kvgate-route-mode"] == "endpoint"
            finally:
                await gw.stop()
        assert len(pod.received) == 1  # only the mutual-TLS stream got a pod
    finally:
        await epp.stop(0)
        await pod.stop()
