"""s17-fixes-b L2: 899eb7a resets an HTTP/1.0 (close-delimited) response only when the handler aborts it
(StreamResponse.abort). The front's own aborts of such a connection (close_all at shutdown here; the send
deadline in sweep and send()'s hard output bound likewise) still end it with a clean FIN, so an HTTP/1.0
client takes the cut body as complete.
Fixed: FrontProtocol.abort resets any connection carrying a close-delimited body, whoever aborts it.
"""

from __future__ import annotations

import asyncio

from kvgate.httpfront.server import FrontServer, Request, Response, StreamResponse


async def test_close_all_during_an_http10_stream_resets_not_closes() -> None:
    started = asyncio.Event()

    async def handler(req: Request) -> StreamResponse | Response:
        out = StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await out.prepare(req)
        await out.write(b'{"data": [' + b"1," * 1000)
        started.set()
        await asyncio.sleep(30)  # the rest never comes: the gateway shuts down meanwhile
        await out.write(b"1]}")
        return out

    front = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /a HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        async with asyncio.timeout(5):
            await started.wait()
            await asyncio.sleep(0.05)
            front.close_all()  # shutdown with the body half sent
            clean = True
            try:
                got = await reader.read()  # to the close
            except ConnectionError:
                clean = False
        assert not clean, (
            f"HTTP/1.0 body cut by close_all ended with a clean close ({len(got)} bytes, no Content-Length): "
            "the client takes a truncated body as complete"
        )
    finally:
        writer.close()
        front.close_all()
        server.close()
