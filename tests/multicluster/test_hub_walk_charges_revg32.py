"""Review s32-rev-g32 of the hub's walk down a cluster EPP's ``x-gateway-destination-endpoint`` list
(``kvgate serve --clusters``, Endpoint mode).

A "blackholed" address on loopback: a listener on port 0 (held, so no one else takes it) whose accept queue
is full (``listen(0)``, filled): Linux drops further SYNs (``net.ipv4.tcp_abort_on_overflow`` = 0, the
default), so a connect waits out its timeout, as a pod IP the hub cannot route to.

- F2: a walk the request's bound ends charges its cluster as one address does (fails on a5ff1d61:
  failures 0 after the 504).
- F4: an entry that is no ``host:port`` is skipped, as GIE proposal 004's "first valid endpoint" (fails on
  a5ff1d61: 503 "unreachable: InvalidUrlClientError")."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import aiohttp
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.test_hub_walks_epp_fallbacks_fail32 import BODY, ListEpp


@contextlib.contextmanager
def blackholed() -> Iterator[str]:
    """An address whose connects wait out their timeout: a held listener with its accept queue full."""
    ls = socket.socket()
    fill: list[socket.socket] = []
    try:
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        for _ in range(4):  # (the accept queue filled: its SYNs dropped from here on)
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(ls.getsockname())
            fill.append(c)
        yield f"127.0.0.1:{ls.getsockname()[1]}"
    finally:
        ls.close()
        for c in fill:
            c.close()


@contextlib.asynccontextmanager
async def list_epp(dest: str):  # type: ignore[no-untyped-def]
    """A scripted EPP on loopback (port 0) naming ``dest``; yields (the EPP, its address)."""
    epp = ListEpp(dest)
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(epp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield epp, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_a_walk_the_bound_ended_charges_its_cluster_as_one_address_does() -> None:
    # EPP [A, B] both blackholed, connect 2 s, bound 3 s: A 0-2 s, B 2-3 s. The cluster had the whole bound
    # (its first address's send), so it is charged as with [A] alone; the last address's send (2 s of 3 s)
    # was not "the larger part" and left it uncharged (the next request went there and 504ed again).
    with blackholed() as a, blackholed() as b:
        await asyncio.sleep(0.5)
        async with list_epp(f"{a},{b}") as (_, epp_at):
            cfg = ClustersConfig((ClusterSpec("c0", epp=epp_at),), request_timeout_s=3.0)
            hub = GlobalGateway(cfg, "round-robin", fetch=False, seed=1)
            await hub.start("127.0.0.1", 0)
            try:
                hub.router.connect_timeout_s = 2.0
                url = f"http://127.0.0.1:{hub.port}/v1/completions"
                async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
                    raw = await r.read()
                assert r.status == 504, raw
                st = hub.router.states["c0"]
                assert st.failures == 1, (st.failures, raw)
            finally:
                await hub.stop()


async def test_the_walk_skips_an_entry_that_is_no_address(global_gateway) -> None:  # type: ignore[no-untyped-def]
    good = await Backend("good").start()
    try:
        async with list_epp(f"127.0.0.1:99999,{good.address}") as (epp, epp_at):
            hub = await global_gateway(ClusterSpec("c0", epp=epp_at))
            url = f"http://127.0.0.1:{hub.port}/v1/completions"
            async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
                raw = await r.read()
            assert r.status == 200, raw
            assert len(good.received) == 1 and epp.served == [good.address]
    finally:
        await good.stop()
