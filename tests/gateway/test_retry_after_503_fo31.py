"""Every 503 kvgate makes says when to retry (closing-s30 "Failover leftovers": the gateway's "all
attempts failed" 503 had no ``Retry-After``, nor the picker's "no endpoint" 503, in ``kvgate serve``,
``kvgate epp`` and ``kvgate serve --clusters``). Real gateway and backends on loopback (port 0).

Fails on main 691110b3: no ``Retry-After`` on any of these 503s."""

from __future__ import annotations

import time

import aiohttp
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway
from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc.session import Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.multicluster.router import Attempt, no_route
from kvgate.scheduling.types import InferenceRequest, NoCapacityError

BODY = b'{"model":"m","prompt":"x","max_tokens":2}'


async def test_all_attempts_failed_503_says_when_to_retry():
    a, b = await Backend("a").start(), await Backend("b").start()
    a.mode = b.mode = "drop"  # each reads the request and resets the connection
    cfg = make_config([a.address, b.address], extra={"limits": {"maxAttempts": 2}})
    try:
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            for _ in range(3):  # (attempts failed, then the picker's own 503 once both are out: each says)
                async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                    body = await r.read()
                    assert r.status == 503, body
                    assert r.headers.get("Retry-After") == "1", (dict(r.headers), body)
    finally:
        await a.stop()
        await b.stop()


class _NoEndpoint:
    """A picker with nothing eligible (as the Director raises it)."""

    def pick(self, req: InferenceRequest) -> None:
        raise NoCapacityError("no endpoint is ready")

    def on_dispatched(self, *a: object) -> None: ...

    def on_first_token(self, *a: object, **k: object) -> None: ...

    def on_finished(self, *a: object) -> None: ...


def test_the_epps_no_endpoint_503_says_when_to_retry():
    ep = Endpoint("127.0.0.1:1")
    s = Session(SessionContext(_NoEndpoint(), lambda: {ep.address: ep}, clock=time.monotonic))
    headers = pb.HttpHeaders(headers=header_map({":method": "POST", ":path": "/v1/completions"}))
    assert s.handle(pb.ProcessingRequest(request_headers=headers)) == []
    body = pb.HttpBody(body=orjson.dumps({"model": "m", "prompt": "p"}), end_of_stream=True)
    (out,) = s.handle(pb.ProcessingRequest(request_body=body))
    s.close()
    imm = out.immediate_response
    assert imm.status.code == 503
    sets = {h.header.key: h.header.raw_value for h in imm.headers.set_headers}
    assert sets.get("retry-after") == b"1", sets


def test_the_hubs_every_cluster_failed_503_says_when_to_retry():
    for attempts in (
        [],
        [Attempt("a", "parent", "x", "unreachable")],
        [Attempt("a", "parent", "x", "status 413", status=413), Attempt("b", "parent", "y", "unreachable")],
    ):
        e = no_route(attempts)
        assert (e.status, e.retry_after) == (503, 1), (attempts, e.message)
