# ruff: noqa: E501, RUF059  (a frozen one-off analysis script, kept as run)
"""cProfile of the in-memory gateway (scripts/_costkit.py's, as scripts/gateway_path_cost.py drives it:
the gateway-overhead request, kvgate policy, two endpoints) with a CPU-time clock. On a compiled build
(scripts/build_compiled.py) it lists only what still runs interpreted (compiled functions make no profile
events): cpu35's list of the interpreted calls a request makes.
    cd <tree> && PYTHONPATH=src python docs/benchmarks/gateway-overhead-s35/prof_compiled.py 5000 <tree>/scripts
"""

import cProfile
import pstats
import sys
import time

sys.path.insert(0, sys.argv[2] if len(sys.argv) > 2 else "/work/wt/cpu35/scripts")
import asyncio
import itertools

import uvloop
from _costkit import in_memory_gateway

from kvgate.bench.gateway_overhead import _COMPLETION, BODY, _request_bytes
from kvgate.config.gateway import config_from_flags
from kvgate.gateway.cli import build_pools, tune_gc
from kvgate.gateway.server import GatewayServer

reply = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_COMPLETION)).encode()
    + b"\r\n\r\n"
    + _COMPLETION
)
request = _request_bytes(18080, "/v1/completions", BODY)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000


async def main():
    cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], "kvgate")
    gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
    front, proto, client = in_memory_gateway(cfg, gw, itertools.repeat(reply).__next__)
    loop = asyncio.get_running_loop()

    async def one():
        client.got = loop.create_future()
        proto.data_received(request)
        return await client.got

    for _ in range(2000):
        await one()
    tune_gc()
    pr = cProfile.Profile(time.process_time)
    pr.enable()
    for _ in range(N):
        await one()
    pr.disable()
    st = pstats.Stats(pr)
    st.sort_stats("tottime").print_stats(40)


uvloop.run(main())
