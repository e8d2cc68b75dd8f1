"""CPU of one request through the gateway's own code, sockets left out: this tree against another.

    PYTHONPATH=src python scripts/gateway_path_cost.py --base-src <other checkout>/src \\
        [--requests 5000] [--rounds 7] [--repeats 3] [--policy kvgate]

What ``kvgate bench gateway-overhead`` sends (a non-streamed ``POST /v1/completions`` with its short
prompt, answered with its fixed completion), through the real front (``httpfront``), proxy, picker
(``kvgate serve``'s pool for ``--policy``, two endpoints, no scrapes), upstream client and metrics, in
one process, with the two sockets replaced by in-memory transports: the client's request is handed to
the front's ``data_received``, the upstream's answer to the upstream connection's one loop turn after
the request is written (as a reply from a socket would be). So the figure is the gateway's Python work
per request (and the event loop's turns), without the kernel's socket reads and writes, which the
end-to-end benchmark measures too and which are the same for both trees.

Each repeat runs the base tree then this tree, each in a fresh process: warmed, then ``--rounds``
rounds of ``--requests`` sequential requests, CPU time (``process_time``) per request for each round;
a process's figure is its fastest round (the least disturbed by other work on the machine). Prints
every process's figure, the medians over repeats and the ratio (this / base).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE_SRC = Path(__file__).resolve().parent.parent / "src"


def _measure(requests: int, rounds: int, policy: str) -> dict[str, Any]:
    import asyncio
    import time

    import uvloop

    from kvgate.bench.gateway_overhead import _COMPLETION, BODY, _request_bytes
    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway import upstream
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.gateway.proxy import Proxy
    from kvgate.gateway.server import GatewayServer

    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(_COMPLETION)).encode()
        + b"\r\n\r\n"
        + _COMPLETION
    )
    request = _request_bytes(18080, "/v1/completions", BODY)

    class Transport:
        """Both sides' transport: writes are kept (client) or answered a loop turn later (upstream)."""

        def __init__(self, conn: Any = None) -> None:
            self.conn = conn
            self.got: asyncio.Future[bytes] | None = None
            self.loop = asyncio.get_running_loop()

        def write(self, data: bytes) -> None:
            if self.conn is not None:
                self.loop.call_soon(self.conn.data_received, reply)
            elif self.got is not None and not self.got.done():
                self.got.set_result(data)

        def get_write_buffer_size(self) -> int:
            return 0

        def set_write_buffer_limits(self, high: int | None = None) -> None:
            pass

        def close(self) -> None:
            pass

        abort = pause_reading = resume_reading = close

        def can_write_eof(self) -> bool:
            return False

    async def main() -> dict[str, Any]:
        cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], policy)
        gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
        proxy = gw.proxy = Proxy(cfg, gw.pools, gw.metrics, gw.health, gw.clock)

        async def connect(address: str, tls: Any) -> upstream._Conn:
            conn = upstream._Conn(proxy.upstream, address)
            conn.connection_made(Transport(conn))
            proxy.upstream._open.add(conn)
            return conn

        proxy.upstream._connect = connect  # type: ignore[method-assign]
        front = gw._front(proxy, admin=False)
        proto = front.protocol()
        client = Transport()
        proto.connection_made(client)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()

        async def one() -> bytes:
            client.got = loop.create_future()
            proto.data_received(request)
            return await client.got

        for _ in range(2000):
            answer = await one()
        if not answer.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected answer: {answer[:200]!r}")
        tune_gc()  # as kvgate serve does after its start-up
        per_round = []
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(requests):
                await one()
            per_round.append((time.process_time() - t0) / requests * 1e6)
        front.close_all()
        return {"us_per_request": min(per_round), "rounds": per_round}

    result: dict[str, Any] = uvloop.run(main())
    return result


def _run(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--_measure", str(args.requests), str(args.rounds), args.policy],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        print(json.dumps(_measure(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-src", required=True, type=Path, help="the other tree's src/ (the baseline)")
    p.add_argument("--requests", type=int, default=5000, help="requests per round")
    p.add_argument("--rounds", type=int, default=7, help="rounds per process (its fastest counts)")
    p.add_argument("--repeats", type=int, default=3, help="processes per tree, alternating")
    p.add_argument("--policy", default="kvgate", help="the pool's policy (kvgate, round-robin, ...)")
    args = p.parse_args()
    trees = {"base": args.base_src.resolve(), "this": HERE_SRC}
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for rep in range(args.repeats):
        for name, src in trees.items():
            r = _run(src, args)
            figures[name].append(r["us_per_request"])
            rounds = " ".join(f"{x:.1f}" for x in r["rounds"])
            us = r["us_per_request"]
            print(f"repeat {rep + 1} {name:<4} {us:7.2f} us/request  (rounds: {rounds})", flush=True)
    base, this = (statistics.median(figures[n]) for n in trees)
    print(f"\nmedian base {base:.2f} us/request, this {this:.2f} us/request: ratio {this / base:.3f}")
    print(f"(policy {args.policy}; base {trees['base']}; this {trees['this']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
