"""The drain and HTTP/1.1 pipelining at the front (``FrontProtocol._serve``), review rev-a33.

F1: a request pipelined behind the answer in flight whose bytes are still unread in the kernel when that
answer ends is answered, not reset: the answer's close path polls the socket (``_readable``) while
draining. Deterministic, no sleeps: the second request goes out (a blocking ``sendall`` over loopback: in
the front's kernel buffer on return) in the same synchronous step that opens the gate ending the first
answer, so the handler resumes before the loop reads the socket again.

F2: a client that always keeps one request pipelined does not keep its connection through the drain: the
connection is kept past one answer at most (the request already received then is answered, and its answer
says ``Connection: close``), as docs/gateway.md's drain rule says. State waits only: each answer is
released once the next request is in the connection's queue."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable

from kvgate.httpfront.server import FrontServer, Request, Response


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def _until(ready: Callable[[], bool]) -> None:
    """Polls a state the loop changes (no event exists for it), within a 30 s deadline."""
    async with asyncio.timeout(30):
        while not ready():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _nf(_r: Request) -> Response:
    return Response(status=404, text="nf")


async def _unread_behind(read_first: bool) -> bytes:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(_r: Request) -> Response:
        entered.set()
        await gate.wait()
        return Response(text="first", content_type="text/plain")

    async def fast(_r: Request) -> Response:
        return Response(text="second", content_type="text/plain")

    front = FrontServer({"/a": slow, "/b": fast}, _nf, max_body=1 << 20)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(front.protocol, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    cli.setblocking(True)
    try:
        cli.sendall(_get("/a"))
        async with asyncio.timeout(30):
            await entered.wait()
        front.drain()  # SIGTERM: the connection is busy, kept until its answer
        cli.sendall(_get("/b"))  # pipelined behind the answer in flight
        if read_first:
            await _until(lambda: any(c.queue for c in front.connections))
        else:  # (rev-ci33: the bytes in the front's socket; a poll that does not yield to the loop)
            [conn] = front.connections
            poller = select.poll()
            poller.register(conn.transport.get_extra_info("socket").fileno(), select.POLLIN)
            assert poller.poll(30_000), "the pipelined request never reached the front's socket"
        gate.set()  # (same synchronous step as the sendall when not read_first)
        cli.setblocking(False)
        out = b""
        async with asyncio.timeout(30):
            while True:
                try:
                    chunk = await loop.sock_recv(cli, 65536)
                except ConnectionResetError:
                    out += b"<RESET>"
                    break
                if not chunk:
                    break
                out += chunk
            await front.reads_done()  # (the stop's wait ends: the connection closed)
        return out
    finally:
        cli.close()
        srv.close()
        front.close_all()


def test_a_pipelined_request_still_unread_in_the_kernel_is_answered() -> None:
    out = asyncio.run(_unread_behind(read_first=False))
    assert out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"second"), out
    first, second = out.split(b"first", 1)
    assert b"Connection: close" not in first and b"Connection: close" in second, out


def test_the_same_with_the_request_read_first() -> None:
    out = asyncio.run(_unread_behind(read_first=True))
    assert out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"second"), out


ROUNDS = 10


async def _keep_pipelining() -> tuple[int, list[bytes], bytes]:
    gates = [asyncio.Event() for _ in range(ROUNDS + 2)]
    n = 0

    async def slow(_r: Request) -> Response:
        nonlocal n
        i = n
        n += 1
        await gates[i].wait()
        return Response(text=f"answer{i}", content_type="text/plain")

    front = FrontServer({"/a": slow}, _nf, max_body=1 << 20)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(front.protocol, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    heads: list[bytes] = []
    rest = b""
    try:
        w.write(_get("/a"))
        await _until(lambda: n >= 1)
        front.drain()  # SIGTERM while answer 0 is in flight
        for i in range(ROUNDS):
            w.write(_get("/a"))  # the next request, pipelined behind answer i
            await w.drain()
            await _until(lambda: any(c.queue for c in front.connections))
            gates[i].set()
            async with asyncio.timeout(30):
                heads.append(await r.readuntil(b"\r\n\r\n"))
                await r.readuntil(f"answer{i}".encode())
            if b"Connection: close" in heads[-1]:
                async with asyncio.timeout(30):
                    rest = await r.read()  # the end follows the answer that said close
                    await front.reads_done()
                break
        return len(heads), heads, rest
    finally:
        for g in gates:
            g.set()
        w.close()
        srv.close()
        front.close_all()


def test_a_pipelining_client_does_not_keep_its_connection_through_the_drain() -> None:
    served, heads, rest = asyncio.run(_keep_pipelining())
    # Answer 0 (in flight at the drain) keeps the connection for the request queued behind it; answer 1
    # says Connection: close and the connection ends (before: 10 answers and still open).
    assert served == 2, (served, heads)
    assert b"Connection: close" not in heads[0] and b"Connection: close" in heads[1], heads
    assert rest == b"", rest
