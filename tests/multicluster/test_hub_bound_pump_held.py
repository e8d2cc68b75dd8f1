"""Review s21-fixes-b F1: the bounded stream's reader (``_Bound._pump``) can hold a message that has
already arrived (read, waiting for ``_ready`` to empty) when the loop asks for the next one; if the bound
has passed by then, ``next`` answers None and the loop cuts, though that message was read before the bound.

Setup (deterministic, no timing assertion): the gRPC write of the response-headers answer is slow (the
consumer of ``Process`` awaits past the due time, as grpc.aio's send awaits its write), and two response
body chunks of a JSON answer arrive meanwhile, both before the due time: A (held by the session, no answer)
then B (end of stream). The pump reads A into ``_ready`` and B into its own local, waiting for room.
When the write returns, the loop takes A (the pump is woken but has not run), handles it (no answer: the
JSON is held), asks again: ``_ready`` is empty, the bound is owed: cut, 504 ImmediateResponse, west charged.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.extproc import server as srv
from kvgate.extproc.context import AddressIndex
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import header_map
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import ClusterDirector

HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})
PART_A = b'{"choices": [{"text": '
PART_B = b'"done"}]}'
BOUND_S = 0.4

pytestmark = pytest.mark.asyncio


class _Ctx:
    async def abort(self, code: object, message: str) -> None:
        raise AssertionError(f"abort {code} {message}")


class _Feed:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.msgs = [
            pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(HEADERS))),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=BODY, end_of_stream=True)),
            pb.ProcessingRequest(
                response_headers=pb.HttpHeaders(
                    headers=header_map({":status": "200", "content-type": "application/json"})
                )
            ),
        ]
        self.n = 0
        self.body_at = 0.0
        self.headers_given = asyncio.Event()

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> pb.ProcessingRequest:
        self.n += 1
        if self.n <= 3:
            if self.n == 2:
                self.body_at = self.loop.time()
            if self.n == 3:
                self.headers_given.set()
            return self.msgs[self.n - 1]
        due = self.body_at + BOUND_S
        if self.n == 4:  # A: arrives 0.1 s before the due time
            await asyncio.sleep(max(0.0, due - 0.1 - self.loop.time()))
            return pb.ProcessingRequest(response_body=pb.HttpBody(body=PART_A))
        if self.n == 5:  # B (end of stream): arrives 0.05 s before the due time
            await asyncio.sleep(max(0.0, due - 0.05 - self.loop.time()))
            return pb.ProcessingRequest(response_body=pb.HttpBody(body=PART_B, end_of_stream=True))
        await asyncio.Event().wait()  # (Envoy keeps the stream open)
        raise StopAsyncIteration


async def test_a_message_read_before_the_bound_but_held_by_the_reader_is_not_cut() -> None:
    cfg = ClustersConfig((ClusterSpec("west", gateway="127.0.0.1:9"),), request_timeout_s=BOUND_S)
    director = ClusterDirector(cfg, "round-robin", seed=0)
    try:
        west = director.states["west"]
        west.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), time.monotonic())
        ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
        ctx.request_timeout_s = lambda: director.cfg.request_timeout_s
        feed = _Feed()
        outs = []
        gen = srv.ExtProcServicer(ctx).Process(feed, _Ctx())  # type: ignore[arg-type]
        try:
            async for r in gen:
                outs.append(r)
                if r.HasField("response_headers"):
                    # grpc.aio's write of this answer is slow (Envoy's window): it returns after the due.
                    await asyncio.sleep(max(0.0, feed.body_at + BOUND_S + 0.05 - feed.loop.time()))
                if r.HasField("immediate_response") or (
                    r.HasField("response_body")
                    and r.response_body.response.body_mutation.streamed_response.end_of_stream
                ):
                    break
        finally:
            await gen.aclose()
        kinds = [r.WhichOneof("response") for r in outs]
        assert "immediate_response" not in kinds, (
            f"B (end of stream, read before the bound) was cut: {kinds}, west backoff {west.backoff_s}"
        )
        body = b"".join(
            r.response_body.response.body_mutation.streamed_response.body
            for r in outs
            if r.HasField("response_body")
        )
        assert body == PART_A + PART_B
    finally:
        await director.close()
