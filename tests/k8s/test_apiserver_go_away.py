"""``ApiServerDouble.go_away`` resets every connection, also one its reset missed (session 16): a
connection accepted just before ``go_away`` whose ``connection_made`` ran only after the reset loop was not
reset, and its requests were served (seen under load: a reflector's re-watch found the "gone" double
serving it, watch open, bookmarks flowing, so the copy never aged). Modelled by hiding a live connection
from the reset loop, over real HTTP on loopback."""

from __future__ import annotations

import asyncio

from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble


async def test_a_connection_the_reset_missed_gets_no_answer_after_go_away() -> None:
    """Fails before: the hidden connection's request was answered (HTTP/1.1 200)."""
    async with ApiServerDouble() as double:
        reader, writer = await asyncio.open_connection(double.host, double.port)
        try:
            assert double._runner is not None and double._runner.server is not None
            server = double._runner.server
            await until(lambda: len(server.connections) == 1)
            hidden = dict(server._connections)  # (its connection_made still pending at the reset)
            server._connections.clear()
            await double.go_away()
            server._connections.update(hidden)
            writer.write(b"GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: api\r\n\r\n")
            await writer.drain()
            try:
                async with asyncio.timeout(10):
                    answer = await reader.read(64)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", answer
            await double.come_back()  # (back: served again)
        finally:
            writer.close()
