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
