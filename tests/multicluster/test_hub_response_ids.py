"""The hub EPP keeps Responses API ids (closing note s20): a ``previous_response_id`` follow-up, or a
lookup, through ``kvgate epp --clusters`` goes first to the cluster whose gateway served the response it
names (the picked one, or Envoy's served-endpoint metadata after a fallback), then the policy's order as
fallbacks (with ``destination_fallbacks``; alone without, hub33), as ``kvgate serve --clusters`` sends a
follow-up to its home cluster. Over real ext_proc gRPC."""

from __future__ import annotations

import time

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.extproc.context import AddressIndex
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import Exchange, channel
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import ClusterDirector

RESPONSES = {":method": "POST", ":path": "/v1/responses", "content-type": "application/json"}
JSON = {"content-type": "application/json"}
EAST, WEST = "10.1.0.2:8080", "10.2.0.2:8080"


@pytest.mark.parametrize("fallbacks", [True, False])
async def test_a_follow_up_goes_first_to_the_cluster_that_served_the_response(fallbacks: bool) -> None:
    cfg = ClustersConfig((ClusterSpec("east", gateway=EAST), ClusterSpec("west", gateway=WEST)))
    director = ClusterDirector(cfg, "round-robin", seed=0, fallbacks=fallbacks)
    now = time.monotonic()
    for st in director.states.values():
        st.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), now)
    ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.ExternalProcessorStub(ch)
    try:
        async with Exchange(stub, timeout=30) as ex:
            out = await ex.send_request(RESPONSES, orjson.dumps({"model": "m", "input": "hi"}))
            home = out.destination.split(",")[0]
            await ex.send_response(200, JSON, [b'{"id": "resp_w", "object": "response"}'])
        other = EAST if home == WEST else WEST
        follow = orjson.dumps({"model": "m", "input": "more", "previous_response_id": "resp_w"})
        for _ in range(4):  # (round robin alternates east and west first)
            async with Exchange(stub, timeout=30) as ex:
                out = await ex.send_request(RESPONSES, follow)
                assert out.destination.split(",") == [home, other][: 2 if fallbacks else 1], out.destination
                await ex.send_response(200, JSON, [b'{"id": "resp_x"}'])
        async with Exchange(stub, timeout=30) as ex:
            out = await ex.send_request({":method": "GET", ":path": "/v1/responses/resp_w"}, None)
            assert out.destination.split(",")[0] == home, out.destination
        assert all(st.backoff_s == 0 for st in director.states.values())
    finally:
        await ch.close()
        await server.stop(0)
