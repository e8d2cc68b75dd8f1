"""The set-up of the hub tests in which a pod's failure behind ``kvgate serve --clusters`` must reach its
cluster's ``kvgate epp`` (fo31's 5xx, fail32's lost answer): a real EPP (gRPC, loopback, port 0) whose
passive health (``extproc.outlier``) ejects a pod after two failures, and requests through the hub until
it does (small33 (e): each test carried a copy)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.outlier import Outlier
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext

WAIT_S = 30.0


@asynccontextmanager
async def ejecting_epp(addresses: list[str]) -> AsyncIterator[tuple[int, EndpointStore]]:
    """A round-robin ``kvgate epp`` over ``addresses`` that ejects a pod after two failures (its probe
    back far beyond a test): its gRPC port and its store."""
    store = EndpointStore.from_addresses(addresses)
    index = AddressIndex(store)
    tracker = HealthTracker(HealthConfig(eject_after_failures=2, eject_base_s=300, eject_max_s=300),
                            time.monotonic, store.all)  # fmt: skip
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), index,
                         clock=time.monotonic, outlier=Outlier(tracker, index))  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    try:
        yield epp.port, store
    finally:
        await epp.stop(0)


async def post_until_ejected(
    hub_port: int, store: EndpointStore, address: str, body: bytes, what: str
) -> None:
    """POST ``body`` to the hub's completions until ``address`` is ejected (each answered 200 by the other
    pod: qa30 Q9), failing after ``WAIT_S``."""
    url = f"http://127.0.0.1:{hub_port}/v1/completions"
    deadline = time.monotonic() + WAIT_S
    async with aiohttp.ClientSession() as http:
        while (ep := store.get(address)) is not None and ep.healthy:
            assert time.monotonic() < deadline, f"{what} not ejected within {WAIT_S}s"
            async with http.post(url, data=body) as r:
                assert r.status == 200, await r.read()
                await r.read()
