"""Where one request's work goes along the gateway's whole Python path, counted, not timed (issue #16).

    PYTHONPATH=src python scripts/gateway_path_parts.py [--requests 1000] [--policy kvgate] [--functions 0]

``gateway_path_cost.py``'s in-memory request (the bench's non-streamed ``POST /v1/completions`` through
the real front, proxy, picker, upstream client and metrics; the two sockets in memory), 1,000 warm-up
requests, then ``--requests`` under a tracer that counts, for each part of the path, the bytecode
instructions its Python code executes (``sys.settrace`` with ``f_trace_opcodes``), its Python calls
(each coroutine resume counts as one) and the C functions it calls (``sys.setprofile``'s ``c_call``).
Counts, so the same code gives the same figures whatever else runs on the machine. A frame belongs to
the innermost function on its stack that ``PARTS`` names (a callback the event loop runs directly, with
no such function on its stack: "(loop callbacks)"). What the counts miss: the work inside C functions
(the JSON decoders, llhttp, the regex engine, the event loop, the interpreter's own frame and object
handling), for which callgrind's whole-request totals (``scripts/gateway_path_instructions.sh``) are the
figure. ``--functions N``: also the N functions executing the most bytecodes themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import sys
from types import CodeType, FrameType
from typing import Any

# (part, qualified names of the functions that open it; a name found only in kvgate's src)
PARTS: list[tuple[str, list[str]]] = [
    ("front: read, parse head", ["FrontProtocol.data_received"]),
    ("front: connection task", ["FrontProtocol._serve", "FrontProtocol._run", "FrontProtocol._next"]),
    ("front: answer head, write", ["_head", "FrontProtocol.send"]),
    ("proxy: _entry (own code)", ["Proxy._entry"]),
    ("proxy: _dispatch (own code)", ["Proxy._dispatch"]),
    ("prepare: body parse", ["parse_body"]),
    ("prepare: rest (headers, request model)", ["Proxy._prepare"]),
    ("pick", ["Director.pick"]),
    ("accounting", ["Director.on_dispatched", "Director.on_first_token", "Director.on_finished"]),
    ("accounting", ["Director.on_whole"]),
    ("metrics", ["RequestStats.start", "RequestStats.stop", "RequestStats.observe", "RequestStats.flow"]),
    ("upstream: send, wait for head", ["UpstreamPool.request"]),
    ("upstream: read, parse (llhttp callbacks)", ["_Conn.data_received"]),
    ("upstream: read timer", ["_Conn._on_timer"]),
    ("upstream: release to the pool", ["UpstreamResponse.release"]),
    ("answer: usage read", ["usage_from_body"]),
    ("answer: rest (_whole)", ["Proxy._whole"]),
]
_BY_NAME = {name: part for part, names in PARTS for name in names}
HARNESS = "(harness)"
LOOP = "(loop callbacks)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--policy", default="kvgate")
    ap.add_argument("--functions", type=int, default=0)
    args = ap.parse_args()

    import uvloop

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from _costkit import in_memory_gateway

    from kvgate.bench.gateway_overhead import _COMPLETION, BODY, _request_bytes
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.gateway.server import GatewayServer

    ops: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    ccalls: collections.Counter[str] = collections.Counter()
    own: collections.Counter[CodeType] = collections.Counter()
    code_part: dict[CodeType, str | None] = {}
    frame_part: dict[FrameType, str] = {}

    def part_of(frame: FrameType) -> str:
        p = frame_part.get(frame)
        if p is None:
            code = frame.f_code
            if code not in code_part:
                named = _BY_NAME.get(code.co_qualname)
                code_part[code] = named if named and "kvgate" in code.co_filename else None
            p = code_part[code]
            if p is None:
                if code.co_filename == __file__:
                    p = HARNESS
                else:
                    up = frame.f_back
                    p = part_of(up) if up is not None else LOOP
            frame_part[frame] = p
        return p

    def local(frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "opcode":
            ops[part_of(frame)] += 1
            own[frame.f_code] += 1
        return local

    def tracer(frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "call":
            calls[part_of(frame)] += 1
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    def profiler(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "c_call":
            ccalls[part_of(frame)] += 1

    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(_COMPLETION)).encode()
        + b"\r\n\r\n"
        + _COMPLETION
    )
    request = _request_bytes(18080, "/v1/completions", BODY)

    async def run() -> bytes:
        cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], args.policy)
        gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
        _front, proto, client = in_memory_gateway(cfg, gw, itertools.repeat(reply).__next__)
        loop = asyncio.get_running_loop()

        async def one() -> bytes:
            client.got = loop.create_future()
            proto.data_received(request)
            answer: bytes = await client.got
            return answer

        for _ in range(1000):
            await one()
        tune_gc()
        sys.settrace(tracer)
        sys.setprofile(profiler)
        try:
            for _ in range(args.requests):
                answer = await one()
        finally:
            sys.settrace(None)
            sys.setprofile(None)
        return answer

    answer = uvloop.run(run())
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"unexpected answer: {answer[:200]!r}")
    n = args.requests
    total = sum(v for k, v in ops.items() if k != HARNESS)
    print(f"policy {args.policy}, {n} requests; per request:")
    print(f"{'part':42s} {'bytecodes':>9s} {'share':>6s} {'py calls':>8s} {'C calls':>7s}")
    for part, v in sorted(ops.items(), key=lambda kv: -kv[1]):
        if part != HARNESS:
            share = 100 * v / total
            print(f"{part:42s} {v / n:9.1f} {share:5.1f}% {calls[part] / n:8.2f} {ccalls[part] / n:7.2f}")
    tc = sum(v for k, v in calls.items() if k != HARNESS) / n
    tcc = sum(v for k, v in ccalls.items() if k != HARNESS) / n
    print(f"{'total (the harness left out)':42s} {total / n:9.1f} {'':6s} {tc:8.2f} {tcc:7.2f}")
    if args.functions:
        print(f"\nthe {args.functions} functions executing the most bytecodes themselves, per request:")
        for code, v in own.most_common(args.functions):
            where = code.co_filename.rsplit("src/", 1)[-1]
            print(f"{v / n:9.1f}  {code.co_qualname}  ({where}:{code.co_firstlineno})")


if __name__ == "__main__":
    main()
