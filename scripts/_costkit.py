"""Pieces the CPU-cost scripts share: the fastest of a few timed rounds (``fastest``), one request
through a pool's director as ``gateway-overhead`` sends it (``request_flow``), and the whole gateway in one
process with both sockets in memory (``in_memory_gateway``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def fastest_fresh(rounds: int, fresh: Callable[[], Callable[[], T]]) -> tuple[float, T]:
    """``rounds`` rounds, each ``fresh()`` (untimed: what the round needs anew) then the work it returns,
    timed in CPU seconds (``process_time``): the fastest round's seconds and the last round's result."""
    best = float("inf")
    for _ in range(rounds):
        work = fresh()
        t0 = time.process_time()
        out = work()
        best = min(best, time.process_time() - t0)
    return best, out


def fastest(rounds: int, work: Callable[[], T]) -> tuple[float, T]:
    """``fastest_fresh`` with nothing made anew between rounds."""
    return fastest_fresh(rounds, lambda: work)


def request_flow(director: Any, body: dict[str, Any], usage: Any = None) -> Callable[[int], None]:
    """``one(i)``: request ``b{i}`` (``body``'s prompt and ``max_tokens``, 6 prompt tokens) through
    ``director``'s ``pick``, ``on_dispatched``, ``on_first_token`` (``learn=False``, as a non-streamed
    reply) and ``on_finished`` with ``usage`` (``None``: a fresh ``Usage(6, 8)`` each request)."""
    from kvgate.scheduling.types import InferenceRequest, Usage

    prompt, max_tokens = body["prompt"], body["max_tokens"]

    def one(i: int) -> None:
        r = InferenceRequest(f"b{i}", "m", prompt_text=prompt, prompt_tokens=6, max_tokens=max_tokens)
        ep = director.pick(r).endpoints[0]
        director.on_dispatched(r, ep)
        director.on_first_token(r, ep, learn=False)
        director.on_finished(r, ep, Usage(6, 8) if usage is None else usage, True)

    return one


class MemoryTransport:
    """Both sides' transport: writes are kept (client) or answered a loop turn later (upstream, ``conn``
    given) with ``reply()``, as a reply from a socket would be."""

    def __init__(self, conn: Any = None, reply: Callable[[], bytes] = bytes) -> None:
        self.conn = conn
        self.reply = reply
        self.got: asyncio.Future[bytes] | None = None
        self.loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if self.conn is not None:
            self.loop.call_soon(self.conn.data_received, self.reply())
        elif self.got is not None and not self.got.done():
            self.got.set_result(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # (no socket: the upstream's keepalive setup skips it)

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    abort = pause_reading = resume_reading = close

    def can_write_eof(self) -> bool:
        return False


def in_memory_gateway(cfg: Any, gw: Any, reply: Callable[[], bytes]) -> tuple[Any, Any, MemoryTransport]:
    """``gw`` (a ``GatewayServer`` of ``cfg``, no scrapes) given its ``Proxy`` (``gw.proxy``), whose upstream
    connections are in memory, each write answered with ``reply()``, and one in-memory client connection
    to its front (no admin routes): (the front, the client's protocol, the client's transport, whose
    ``got`` future takes the next answer). It reaches into the upstream client's privates (``_Conn``,
    ``_connect``, ``_open``, ``_put_idle``) and the server's ``_front``."""
    from kvgate.gateway import upstream
    from kvgate.gateway.proxy import Proxy

    proxy = gw.proxy = Proxy(cfg, gw.pools, gw.metrics, gw.health, gw.clock)

    async def connect(address: str, tls: Any, *_: Any) -> Any:  # (deadline: unused)
        conn = upstream._Conn(proxy.upstream, address)
        conn.connection_made(MemoryTransport(conn, reply))
        proxy.upstream._open.add(conn)
        return conn

    # One connection per endpoint made ahead and left idle, which every request then takes (it answers on
    # the loop's next turn, so a sequential caller needs no second one): compiled (``make compiled``), the
    # pool's ``_connect`` cannot be replaced on the instance; interpreted it still is, for a lost one.
    for pool in cfg.pools:
        for address in pool.endpoints:  # ("host:port", the upstream client's address)
            conn = upstream._Conn(proxy.upstream, address)
            conn.connection_made(MemoryTransport(conn, reply))
            proxy.upstream._open.add(conn)
            proxy.upstream._put_idle(conn)
    with contextlib.suppress(AttributeError):
        proxy.upstream._connect = connect
    front = gw._front(proxy, admin=False)
    proto = front.protocol()
    client = MemoryTransport()
    proto.connection_made(client)
    return front, proto, client
