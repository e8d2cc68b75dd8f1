"""s25-rev-prev25 F2: ``kvgate serve --clusters`` in Endpoint mode with a Parent fallback (a cluster with
both ``epp`` and ``gateway``): a follow-up whose home pod answers 503 (draining) is sent on to its home
cluster's gateway without the pod (``GlobalRouter._try_cluster``'s fallback), which, keeping no ids, places
it on a pod without the stored response: the client gets that pod's 404 "Response ... not found", not the
home's 503 that prev25's ``_home_said`` and docs/multicluster.md promise ("a home cluster that *answers*
429 or a 5xx (its EPP, pod or gateway busy or draining) gives the client that status"). Real HTTP and
gRPC on loopback: in-process ``kvgate epp`` servers, Responses stores as pods and cluster gateways.
Moved from the review's directory (fixprev25), with the pod's 429 too: both fail on 968691a2's src."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec


class DrainingStore(ResponsesStore):
    status = 0
    asked = 0  # requests that reached this store (any answer)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.asked += 1
        if self.status:
            err = {"message": "draining", "type": "ServiceUnavailableError", "code": self.status}
            return web.json_response({"error": err}, status=self.status, headers={"Retry-After": "3"})
        return await super()._answer(request)


async def _epp(pods: list[str]) -> EppServer:
    store = EndpointStore.from_addresses(pods)
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic)  # fmt: skip
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    return server


@pytest.mark.parametrize("status", [429, 503])
async def test_a_follow_ups_home_pod_503_in_endpoint_mode_reaches_the_client(
    global_gateway: Callable[..., Any], status: int
) -> None:
    stores = [DrainingStore(n) for n in ("pa", "ga", "pb", "gb")]
    async with serving(*stores) as (pa, ga, pb, gb):
        eppa, eppb = await _epp([pa.address]), await _epp([pb.address])
        try:
            gw = await global_gateway(
                ClusterSpec("a", gateway=ga.address, epp=f"127.0.0.1:{eppa.port}"),
                ClusterSpec("b", gateway=gb.address, epp=f"127.0.0.1:{eppb.port}"),
            )
            url = f"http://127.0.0.1:{gw.port}/v1/responses"
            async with aiohttp.ClientSession() as s:
                async with s.post(url, data=orjson.dumps({"model": "m", "input": "hi"})) as r:
                    assert r.status == 200
                    assert r.headers.get("x-kvgate-route-mode") == "endpoint"
                    rid = orjson.loads(await r.read())["id"]
                pod = next(st for st in (pa, pb) if rid in st.made)
                pod.status = status  # the home pod is busy (429) or drains (503)
                gateways = {st: st.asked for st in (ga, gb)}
                body = {"model": "m", "input": "more", "previous_response_id": rid}
                async with s.post(url, data=orjson.dumps(body)) as r:
                    raw = await r.read()
                    got, wait = r.status, r.headers.get("Retry-After")
            # On 968691a2: 404 from the home cluster's gateway (the Parent fallback), which never made it.
            assert got == status, raw
            assert wait == "3", raw  # (the pod's, as ``_home_said`` passes a 429's or 503's on)
            assert b"cluster " in raw, raw  # (the message naming the home cluster)
            assert {st: st.asked for st in (ga, gb)} == gateways  # no fallback, no other cluster
        finally:
            for e in (eppa, eppb):
                await e.stop(0)
