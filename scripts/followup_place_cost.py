"""CPU of a Responses follow-up whose home is known and up, through the whole gateway, sockets left out:
this tree against another (prev26: the ask for an unknown home must cost the common path nothing).

    PYTHONPATH=src python scripts/followup_place_cost.py --base-src <other checkout>/src \\
        [--requests 2000] [--rounds 5] [--repeats 3]

One process per tree and repeat (alternating, each warmed), ``kvgate serve``'s front, proxy, round-robin
pool of two endpoints and upstream client in memory (``_costkit.in_memory_gateway``). Each request is a
non-streamed ``POST /v1/responses`` naming ``previous_response_id`` ``resp_home``, whose home (the first
endpoint) the proxy knows (``Proxy.responses``): pinned there; each answer is a fixed Responses object
with its usage (and its own id, remembered as a new turn). Figures: ``followup``, CPU time per request,
the fastest of ``--rounds`` rounds; ``digest``: the endpoints the requests went to (both trees must send
every one home). Run in one hold of the live lock (docs/scheduling.md).
"""

from __future__ import annotations

import json
from typing import Any

from _costkit import in_memory_gateway
from tree_runs import requests_rounds_main

_ANSWER = json.dumps(
    {
        "id": "resp_next",
        "object": "response",
        "model": "m",
        "status": "completed",
        "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
        ],
        "usage": {"input_tokens": 6, "output_tokens": 2, "total_tokens": 8},
    }
).encode()
_BODY = json.dumps({"model": "m", "input": "and then?", "previous_response_id": "resp_home"}).encode()


def measure(requests: int, rounds: int) -> dict[str, Any]:
    import asyncio
    import hashlib
    import itertools
    import time

    import uvloop

    from kvgate.config.gateway import config_from_flags
    from kvgate.gateway.cli import build_pools, tune_gc
    from kvgate.gateway.server import GatewayServer

    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(_ANSWER),
        _ANSWER,
    )
    request = (
        b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
    )

    async def main() -> dict[str, Any]:
        cfg = config_from_flags("http://127.0.0.1:18001,http://127.0.0.1:18002", ["m"], "round-robin")
        gw = GatewayServer(cfg, build_pools(cfg), scrape=False)
        front, proto, client = in_memory_gateway(cfg, gw, itertools.repeat(reply).__next__)
        proxy = gw.proxy
        director = proxy.pools[0].director
        went: list[str] = []
        real = director.on_dispatched

        def on_dispatched(ireq: Any, ep: Any) -> None:
            went.append(ep.address)
            real(ireq, ep)

        director.on_dispatched = on_dispatched
        loop = asyncio.get_running_loop()

        async def one() -> bytes:
            proxy.responses.remember("resp_home", "127.0.0.1:18001")  # (kept known: as any fresh id)
            client.got = loop.create_future()
            proto.data_received(request)
            return await client.got

        for _ in range(2000):
            answer = await one()
        if not answer.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected answer: {answer[:300]!r}")
        tune_gc()
        per_round = []
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(requests):
                await one()
            per_round.append((time.process_time() - t0) / requests * 1e6)
        front.close_all()
        digest = hashlib.blake2b(repr(sorted(set(went))).encode(), digest_size=4).hexdigest()
        return {"followup": min(per_round), "digest": digest}

    result: dict[str, Any] = uvloop.run(main())
    return result


if __name__ == "__main__":
    raise SystemExit(
        requests_rounds_main(
            __file__, __doc__ or "", measure, per="requests", unit="request", places=2, width=10, what="homes"
        )
    )
