"""s25-rev-fixprev25 R1: ``kvgate serve --clusters`` in Endpoint mode with a Parent fallback: a follow-up
whose home pod answers 429 (that one pod busy: the EPP was asked for it alone, the subset hint) or 500 (the
request's own fault, s18-doors M4) gets that answer (s25-rev-prev25 F2), and its **home cluster is not
backed off**: ``GlobalRouter.route`` called ``st.failed`` before ``_home_said``, so every new request's
policy order put the whole cluster last (1 s, doubling to 8 s) though its gateway and other pods were fine.
``kvgate serve`` charges neither (a 429 is busy, not broken: s24-rev-fixqa24 R1; a pinned 500 uncharged). A
home pod's 503 (draining) still backs its cluster off, as before. Real HTTP and gRPC on loopback
(in-process ``kvgate epp``s, Responses stores). 429 and 500 fail on main 8c52c2be (backing_off True)."""

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


class BusyStore(ResponsesStore):
    status = 0

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.status:
            err = {"message": "busy", "type": "error", "code": self.status}
            return web.json_response({"error": err}, status=self.status)
        return await super()._answer(request)


async def _epp(pods: list[str]) -> EppServer:
    store = EndpointStore.from_addresses(pods)
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic)  # fmt: skip
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    return server


@pytest.mark.parametrize(("status", "charged"), [(429, False), (500, False), (503, True)])
async def test_a_home_pods_answer_to_a_follow_up_does_not_back_off_its_cluster(
    global_gateway: Callable[..., Any], status: int, charged: bool
) -> None:
    stores = [BusyStore(n) for n in ("pa", "pa2", "ga", "pb", "gb")]
    async with serving(*stores) as (pa, pa2, ga, pb, gb):
        eppa, eppb = await _epp([pa.address, pa2.address]), await _epp([pb.address])
        try:
            gw = await global_gateway(
                ClusterSpec("a", gateway=ga.address, epp=f"127.0.0.1:{eppa.port}"),
                ClusterSpec("b", gateway=gb.address, epp=f"127.0.0.1:{eppb.port}"),
            )
            url = f"http://127.0.0.1:{gw.port}/v1/responses"
            async with aiohttp.ClientSession() as s:
                async with s.post(url, data=orjson.dumps({"model": "m", "input": "hi"})) as r:
                    assert r.status == 200
                    rid = orjson.loads(await r.read())["id"]
                pod = next(st for st in (pa, pa2, pb) if rid in st.made)
                home = "b" if pod is pb else "a"
                pod.status = status  # that one pod busy (429), the request's own 500, draining (503)
                body = {"model": "m", "input": "more", "previous_response_id": rid}
                async with s.post(url, data=orjson.dumps(body)) as r:
                    await r.read()
                    assert r.status == status  # (F2's fix: the pod's answer reaches the client)
            state = {c["name"]: c for c in gw.router.summary()}[home]
            # (on main 8c52c2be a 429 / 500 backed it off too: new requests avoided the cluster)
            assert state["backing_off"] is charged, state
        finally:
            for e in (eppa, eppb):
                await e.stop(0)
