"""Review s21-mc M2: a message that has arrived when the hub EPP's request bound passes is used, never
replaced by the cut. Before, the bound's timer cancelled the stream task's read whenever the read had not
yet resumed the task: a message whose arrival and the timer ran in the same loop turn (both due when the
loop wakes, after a long callback or a GC pause, or on a loaded machine) was thrown away by the cancel, and
the answer's last chunk arriving at the bound became a 504 reset with the cluster charged. (With grpc.aio a
cancelled read also ends the request stream: its async generator is finished by the cancel.)

Deterministic, no timing assertion: a callback keeps the loop busy across the due time, and the last chunk
arrives just before the due time, so both run in the turn after the busy one, the arrival first.
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
ANSWER = b'{"choices": [{"text": "done"}]}'
BOUND_S = 0.5


class _Ctx:
    async def abort(self, code: object, message: str) -> None:
        raise AssertionError(f"abort {code} {message}")


class _Feed:
    """Envoy's messages for one request, the response's last chunk arriving ``arrive_before_s`` before the
    bound's due time while the loop is kept busy from 50 ms before it to 100 ms after it."""

    def __init__(self, arrive_before_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.arrive_before_s = arrive_before_s
        self.first = [
            pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(HEADERS))),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=BODY, end_of_stream=True)),
            pb.ProcessingRequest(
                response_headers=pb.HttpHeaders(
                    headers=header_map({":status": "200", "content-type": "application/json"})
                )
            ),
        ]
        self.n = 0
        # When the request body was handed over: the bound starts at its pick, a moment later, so the
        # due time is at or just after this + BOUND_S (well inside the busy window).
        self.body_at = 0.0

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> pb.ProcessingRequest:
        self.n += 1
        if self.n <= len(self.first):
            if self.n == 2:
                self.body_at = self.loop.time()
            return self.first[self.n - 1]
        if self.n > len(self.first) + 1:
            raise StopAsyncIteration
        due = self.body_at + BOUND_S
        arrived: asyncio.Future[pb.ProcessingRequest] = self.loop.create_future()

        def busy() -> None:  # (the loop held across the due time: a long callback, a GC pause)
            end = time.monotonic() + 0.15
            while time.monotonic() < end:
                pass

        last = pb.ProcessingRequest(response_body=pb.HttpBody(body=ANSWER, end_of_stream=True))
        self.loop.call_at(due - 0.05, busy)
        self.loop.call_at(due - self.arrive_before_s, arrived.set_result, last)
        return await arrived


@pytest.mark.parametrize("arrive_before_s", [0.01, 0.1])  # (0.1: it arrives before the busy turn)
async def test_a_message_arriving_as_the_bound_passes_is_used_not_cut(arrive_before_s: float) -> None:
    cfg = ClustersConfig((ClusterSpec("west", gateway="127.0.0.1:9"),), request_timeout_s=BOUND_S)
    director = ClusterDirector(cfg, "round-robin", seed=0)
    try:
        west = director.states["west"]
        west.set_aggregate(PoolAggregate("p", 1.0, 2, 2, capacity=2.0, headroom=1.5), time.monotonic())
        ctx = SessionContext(director, AddressIndex(director.store), clock=time.monotonic)
        ctx.request_timeout_s = lambda: director.cfg.request_timeout_s
        outs = [r async for r in srv.ExtProcServicer(ctx).Process(_Feed(arrive_before_s), _Ctx())]  # type: ignore[arg-type]
        kinds = [r.WhichOneof("response") for r in outs]
        assert "immediate_response" not in kinds, (
            f"the arrived last chunk was lost to the bound: {kinds}, west backoff {west.backoff_s}"
        )
        body = b"".join(
            r.response_body.response.body_mutation.streamed_response.body
            for r in outs
            if r.HasField("response_body")
        )
        assert body == ANSWER
        assert west.backoff_s == 0
    finally:
        await director.close()
