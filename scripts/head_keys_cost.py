"""CPU of one in-memory request through the gateway (``gateway_path_cost.py``'s), with the heads a real
client sends: bodies of varying length and, optionally, an API key on every request.

    PYTHONPATH=<tree>/src python scripts/head_keys_cost.py DISTINCT REQUESTS ROUNDS key|nokey

Each body is the bench's ``BODY`` padded with JSON whitespace (the same prompt, so the same pick), cycling
over ``DISTINCT`` lengths (1: every head identical). ``key``: ``auth`` on (``apiKeysEnv``) and
``Authorization: Bearer`` on every request. Prints the fastest of ``ROUNDS`` rounds of ``REQUESTS``
sequential requests, CPU microseconds per request. Run it once per tree, alternating trees, in one lock hold
(review s24-rev-cpu24's ``varybench.py``, with the key added; docs/benchmarks/gateway.md "Session 24").
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from typing import Any

from _costkit import in_memory_gateway

KEY = "sk-kvgate-bench-0123456789abcdef0123456789abcdef"


def main() -> None:
    import uvloop

    from kvgate.bench.gateway_overhead import _COMPLETION, BODY
    from kvgate.config.gateway import parse_gateway_config
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.gateway.server import GatewayServer

    distinct, requests, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    key = sys.argv[4] == "key"
    os.environ["KVB_KEYS"] = f"{KEY}=t1"
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(_COMPLETION)).encode()
        + b"\r\n\r\n"
        + _COMPLETION
    )

    def raw(body: bytes) -> bytes:
        auth = f"Authorization: Bearer {KEY}\r\n" if key else ""
        return (
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    reqs = [raw(BODY[:-1] + b" " * i + b"}") for i in range(distinct)]

    async def run() -> None:
        conf: dict[str, Any] = {
            "pools": [
                {
                    "name": "default",
                    "engine": "vllm",
                    "policy": "kvgate",
                    "endpoints": ["http://127.0.0.1:18001", "http://127.0.0.1:18002"],
                    "models": ["m"],
                }
            ]
        }
        if key:
            conf["auth"] = {"apiKeysEnv": "KVB_KEYS"}
        cfg = parse_gateway_config(conf)
        gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
        front, proto, client = in_memory_gateway(cfg, gw, itertools.repeat(reply).__next__)
        loop = asyncio.get_running_loop()

        async def one(i: int) -> bytes:
            client.got = loop.create_future()
            proto.data_received(reqs[i % distinct])
            return await client.got

        for i in range(2000):
            a = await one(i)
        assert a.startswith(b"HTTP/1.1 200 "), a[:200]
        tune_gc()
        best = float("inf")
        for _ in range(rounds):
            t0 = time.process_time()
            for i in range(requests):
                await one(i)
            best = min(best, (time.process_time() - t0) / requests * 1e6)
        front.close_all()
        print(f"{best:.2f}")

    uvloop.run(run())


if __name__ == "__main__":
    main()
