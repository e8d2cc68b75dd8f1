"""What the EPP's ext_proc stream loop (``ExtProcServicer.Process``) costs per request on this machine, with
and without a request bound (the hub EPP's ``limits.requestTimeoutSeconds``): the loop alone, no gRPC.

    PYTHONPATH=src python scripts/extproc_loop_cost.py [--n 2000] [--rounds 5] [--chunks 100]

Each request is one stream of Envoy's messages fed from memory to the servicer (each read one loop turn,
as a real stream's), the pod EPP's director (8 endpoints, the kvgate policy): ``json``, a non-streamed
completion (request headers, body, response headers, a JSON body with ``usage``: 4 messages); ``sse``, a
streamed one whose answer comes in ``--chunks`` body messages of one event each. ``bounded``: every
request with a 30 s bound that never passes (the hub EPP's path). On stdlib asyncio, as ``kvgate epp``
runs; CPU time (``process_time``) per request and per message, the median of ``--rounds``, the kinds
alternating. Run it with main's ``src`` and a branch's back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import ExtProcServicer
from kvgate.extproc.session import SessionContext
from kvgate.extproc.testing import header_map

HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
REPLY = orjson.dumps({"id": "x", "model": "m", "choices": [{"text": "ok"}], "usage": {"prompt_tokens": 5}})


class _Feed:
    def __init__(self, messages: list[pb.ProcessingRequest]) -> None:
        self.it = iter(messages)

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> pb.ProcessingRequest:
        await asyncio.sleep(0)  # (a real stream's read waits for its message: one loop turn at least)
        for msg in self.it:
            return msg
        raise StopAsyncIteration


class _Context:
    async def abort(self, code: object, message: str) -> None:
        raise RuntimeError(f"abort {code} {message}")


def _stream(i: int, chunks: int) -> list[pb.ProcessingRequest]:
    sse = chunks > 0
    body = {"model": "m", "prompt": f"p{i} " * 50, "max_tokens": 4, "stream": sse}
    ctype = "text/event-stream" if sse else "application/json"
    head = [
        pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(HEADERS))),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=orjson.dumps(body), end_of_stream=True)),
        pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(headers=header_map({":status": "200", "content-type": ctype}))
        ),
    ]
    if not sse:
        return [*head, pb.ProcessingRequest(response_body=pb.HttpBody(body=REPLY, end_of_stream=True))]
    event = b'data: {"choices": [{"text": "t"}]}\n\n'
    tail = [pb.ProcessingRequest(response_body=pb.HttpBody(body=event)) for _ in range(chunks - 1)]
    last = pb.ProcessingRequest(response_body=pb.HttpBody(body=b"data: [DONE]\n\n", end_of_stream=True))
    return [*head, *tail, last]


async def _run(n: int, rounds: int, chunks: int) -> dict[str, tuple[float, float]]:
    store = EndpointStore.from_addresses([f"127.0.0.1:{18000 + i}" for i in range(8)])
    servicers = {}
    for bound in (None, 30.0):
        ctx = SessionContext(build_epp_director(None, store, policy="kvgate"), AddressIndex(store),
                             clock=time.monotonic)  # fmt: skip
        ctx.request_timeout_s = None if bound is None else (lambda b=bound: b)
        servicers["bounded" if bound else "unbounded"] = ExtProcServicer(ctx)
    streams = {"json": [_stream(i, 0) for i in range(64)], "sse": [_stream(i, chunks) for i in range(64)]}
    runs: dict[str, list[float]] = {}
    ctx_: Any = _Context()
    for _ in range(rounds):
        for shape, msgs in streams.items():
            for kind, servicer in servicers.items():
                t0 = time.process_time()
                for i in range(n):
                    async for _resp in servicer.Process(_Feed(msgs[i % 64]), ctx_):
                        pass
                runs.setdefault(f"{kind} {shape}", []).append((time.process_time() - t0) * 1e6 / n)
    per = {"json": len(streams["json"][0]), "sse": len(streams["sse"][0])}
    return {k: (statistics.median(v), statistics.median(v) / per[k.split()[1]]) for k, v in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="requests per round and kind")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunks", type=int, default=100, help="body messages of a streamed answer")
    ns = p.parse_args()
    for kind, (us, per_msg) in asyncio.run(_run(ns.n, ns.rounds, ns.chunks)).items():
        print(f"{kind:>14}: {us:9.1f} us CPU per request, {per_msg:6.2f} per message (median of {ns.rounds})")


if __name__ == "__main__":
    main()
