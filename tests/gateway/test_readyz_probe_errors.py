"""Which ``/readyz`` probe failures make a ``--workers`` worker "not ready" (review s21-fixes-a L8).

Only the worker's own answer does: its admin port refused the connection, or reset or closed it
unanswered (``worker_health.REFUSED``). The supervisor's own failures to connect (out of file descriptors,
no local port) are no answer (its last answer stands), and a probe never reuses a pooled keep-alive
connection, which the worker may close just as it is reused (before: every ``aiohttp.ClientError`` was
``REFUSED``, on the shared keep-alive session)."""

from __future__ import annotations

import asyncio
import errno

import aiohttp

from kvgate.bench.ports import free_port
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway import worker_health, workers


def _supervisor() -> workers.Supervisor:
    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    return workers.Supervisor(parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1"}}), 1)


def test_only_a_refusal_or_a_drop_is_the_workers_answer() -> None:
    assert workers.refused_or_dropped(aiohttp.ClientOSError(errno.ECONNREFUSED, "Connection refused"))
    assert workers.refused_or_dropped(aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"))
    assert workers.refused_or_dropped(aiohttp.ServerDisconnectedError())
    assert not workers.refused_or_dropped(aiohttp.ClientOSError(errno.EMFILE, "Too many open files"))
    assert not workers.refused_or_dropped(aiohttp.ClientOSError(errno.EADDRNOTAVAIL, "no local port"))
    assert not workers.refused_or_dropped(aiohttp.ClientPayloadError("cut"))


async def test_each_probe_is_a_fresh_connection_and_a_closed_port_is_refused() -> None:
    peers: list[tuple[str, int]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # (keep-alive: stays open)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = free_port()  # a port nothing listens on (kvgate.bench.ports: no other process binds it)
    sup = _supervisor()
    shared = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
    sup._session = shared
    sup._probe_session = probe
    try:
        assert await sup._ask_ready(port) == 200
        assert await sup._ask_ready(port) == 200
        assert len(set(peers)) == 2, peers  # two probes, two connections: none pooled
        assert await sup._ask_ready(closed) == worker_health.REFUSED
    finally:
        await shared.close()
        await probe.close()
        server.close()
        await server.wait_closed()
