"""A 413 for a body past ``maxBodyBytes`` (8 MiB here; a 32 MiB POST, announced and chunked), sent whole
before the answer is read (stdlib ``http.client``, as ``requests``/urllib3 do): the status and seconds until
the client has it, or how it failed. Then a client that goes on sending without end after a 413 and never
reads: how much the front read (and dropped) before the linger's end, and when. Real sockets on loopback;
run it with the tree to measure first on PYTHONPATH (review s21-gw M1, fixgw21).

    PYTHONPATH=src python scripts/refusal_linger.py [rounds]
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import sys
import time
from collections.abc import Callable

from kvgate.httpfront.server import FrontServer, Request, Response

MAX_BODY = 8 << 20
BODY = 32 << 20


def post(port: int, chunked: bool) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    body: object = (b"x" * (1 << 20) for _ in range(BODY >> 20)) if chunked else b"x" * BODY
    t0 = time.monotonic()
    try:
        conn.request("POST", "/v1/completions", body=body, encode_chunked=chunked)  # type: ignore[arg-type]
        resp = conn.getresponse()
        resp.read()
        return f"{resp.status} in {time.monotonic() - t0:.3f} s"
    except OSError as e:
        return f"{type(e).__name__} at {time.monotonic() - t0:.3f} s"
    finally:
        conn.close()


def flood(port: int) -> str:
    """Sends without end (a 1 TB Content-Length), never reads, until the front ends the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999\r\n\r\n")
        piece, sent, t0 = b"x" * (1 << 20), 0, time.monotonic()
        try:
            while time.monotonic() - t0 < 30:
                sent += s.send(piece)
        except OSError as e:
            return f"{type(e).__name__} at {time.monotonic() - t0:.2f} s, {sent / 1e6:.0f} MB sent"
        return f"still open at 30 s, {sent / 1e6:.0f} MB sent"


async def once(client: Callable[[int], str]) -> str:
    async def handler(req: Request) -> Response:
        return Response(body=b"ok")

    front = FrontServer({}, handler, max_body=MAX_BODY)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    front.watch_idle()
    try:
        return await asyncio.to_thread(client, server.sockets[0].getsockname()[1])
    finally:
        front.close_all()
        server.close()


def main() -> None:
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for _ in range(rounds):
        for name, chunked in (("content-length", False), ("chunked", True)):
            print(f"http.client {name:14s} {asyncio.run(once(lambda p, c=chunked: post(p, c)))}")
    print(f"flood after a 413          {asyncio.run(once(flood))}")


if __name__ == "__main__":
    main()
