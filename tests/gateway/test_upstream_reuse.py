"""The upstream client's connection life cycle over real sockets (review s8-gw): what goes back to the
pool is ready for the next exchange, a response that was answered is never failed by what follows it,
a closed connection is freed at once, and the bytes that are not body stay bounded."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from gateway.conftest import read_body, until
from kvgate.gateway import upstream
from kvgate.gateway.upstream import _HIGH_WATER, UpstreamError, UpstreamPool

_HEAD = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _serve_replies(replies: list[bytes]) -> tuple[asyncio.Server, str, list[int]]:
    """Each connection answers its n-th request with replies[n] (one write), then holds the connection
    open. Returns (server, address, [connections opened])."""
    opened = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened[0] += 1
        try:
            for reply in replies:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                writer.write(reply)
                await writer.drain()
            await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}", opened


async def _exchange(pool: UpstreamPool, address: str) -> tuple[int, bytes]:
    resp = await asyncio.wait_for(pool.request(address, _HEAD, b"{}"), 3)
    try:
        return resp.status, await asyncio.wait_for(read_body(resp), 3)
    finally:
        resp.release()


async def test_a_complete_response_released_unread_while_reading_is_paused_resumes_reading():
    """B1: the read that completes a response crosses the read-ahead cap (reading pauses, the response is
    done) and the response is released unread (the proxy's 5xx retry): the pooled connection reads again,
    so the next request on it is answered, not left to the idle timeout."""
    first_part = _HIGH_WATER - 100  # under the cap: reading goes on
    last_part = 300  # the read that completes the response crosses it
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        n = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                n += 1
                if n == 1:
                    writer.write(
                        b"HTTP/1.1 503 Busy\r\nContent-Length: %d\r\n\r\n" % (first_part + last_part)
                    )
                    writer.write(b"e" * first_part)
                    await writer.drain()
                    await asyncio.sleep(0.2)
                    writer.write(b"e" * last_part)
                else:
                    writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = UpstreamPool(1.0, 2.0)
    try:
        resp = await pool.request(address, _HEAD, b"{}")
        assert resp.status == 503
        # the whole body arrives; nobody reads it
        await until(lambda: resp._conn.done and resp._conn.paused)
        resp.release()
        assert (await _exchange(pool, address)) == (200, b"ok")
        assert connections == 1  # on the same connection
    finally:
        pool.close()
        server.close()


async def test_a_status_below_100_is_refused_and_never_glued_to_the_next_response():
    """B2: llhttp reads ``HTTP/1.1 099`` as a final response with a body; it was taken for an interim
    1xx head and its body handed out as the start of the next response's (``hellook``)."""
    server, address, _ = await _serve_replies([b"HTTP/1.1 099 X\r\nContent-Length: 5\r\n\r\nhello" + OK])
    pool = UpstreamPool(1.0, 2.0)
    try:
        with pytest.raises(UpstreamError, match="malformed response: status 099"):
            await _exchange(pool, address)
        assert not pool._idle.get(address)
    finally:
        pool.close()
        server.close()


async def test_connection_close_in_trailers_is_not_reused_and_the_next_request_is_answered():
    """B3: llhttp takes ``Connection: close`` from a chunked response's trailers (and refuses whatever
    follows on that connection); keep-alive was decided at the head, so the connection was pooled and the
    next request failed after bytes arrived (no resend: a failure against a healthy endpoint)."""
    first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\nConnection: close\r\n\r\n"
    server, address, opened = await _serve_replies(
        [first, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"]
    )
    pool = UpstreamPool(1.0, 2.0)
    try:
        assert (await _exchange(pool, address)) == (200, b"one")
        assert (await _exchange(pool, address)) == (200, b"one")  # a fresh connection's first answer
        assert opened[0] == 2
    finally:
        pool.close()
        server.close()


@pytest.mark.parametrize(
    "junk",
    [
        b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",  # llhttp's upgrade pause
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n",  # > 100 lines
        b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n",  # refused by a callback
        b"garbage",  # refused by llhttp
    ],
    ids=["101 head", "many headers", "status 099", "garbage"],
)
async def test_junk_after_a_complete_response_in_the_same_read_delivers_it_and_drops_the_connection(junk):
    """B4: bytes past a complete response that trip one of the client's callbacks (or llhttp's upgrade
    pause) failed the response already answered: the proxy would retry it (a duplicate generation)."""
    server, address, opened = await _serve_replies([OK + junk, OK])
    pool = UpstreamPool(1.0, 2.0)
    try:
        assert (await _exchange(pool, address)) == (200, b"ok")
        assert (await _exchange(pool, address)) == (200, b"ok")
        assert opened[0] == 2  # the connection with junk on it was not reused
    finally:
        pool.close()
        server.close()


async def test_a_closed_connection_is_freed_without_the_cyclic_collector():
    """R1: the parser holds the connection's callbacks and the connection the parser; a closed
    connection (and the unread body, head and error it holds) waited for a full gc pass, which the
    gateway's frozen heap and raised thresholds make rare."""
    server, address, _ = await _serve_replies(
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]
    )
    pool = UpstreamPool(1.0, 5.0)
    gc.collect()
    gc.disable()
    try:
        resp = await pool.request(address, _HEAD, b"{}")
        assert await read_body(resp) == b"ok"
        ref = weakref.ref(resp._conn)
        resp.release()  # Connection: close: aborted, not pooled
        del resp
        # Freed once connection_lost has run (a reference cycle would keep it: gc is off)
        await until(lambda: ref() is None, what="a closed connection kept alive by a reference cycle")
    finally:
        gc.enable()
        pool.close()
        server.close()


def _live_conns() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is upstream._Conn)


async def test_a_closed_connection_is_freed_without_the_cyclic_collector_no_weakref():
    """R1 again without a weak reference, which a compiled _Conn refuses (rev-d33-F5): live connections
    counted in gc.get_objects() (which tracks compiled instances too), the count first shown to see one."""
    server, address, _ = await _serve_replies(
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]
    )
    pool = UpstreamPool(1.0, 5.0)
    gc.collect()
    before = _live_conns()
    gc.disable()
    try:
        resp = await pool.request(address, _HEAD, b"{}")
        assert await read_body(resp) == b"ok"
        assert _live_conns() == before + 1, "the live connection is not seen by gc.get_objects()"
        resp.release()  # Connection: close: aborted, not pooled
        del resp
        await until(
            lambda: _live_conns() == before, 30.0, what="a closed connection kept alive by a reference cycle"
        )
    finally:
        gc.enable()
        pool.close()
        server.close()


async def test_one_trailer_line_is_bounded_whatever_the_chunk_count():
    """R2: the allowance for bytes that are not body grows with each chunk; one trailer line (which
    httptools holds) could spend it all: 30 000 one-byte chunks let a 16 MiB line through. What arrives
    after the last chunk-size line is bounded on its own."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"1\r\nx\r\n" * 30_000)
            writer.write(b"0\r\nX-T: ")
            for _ in range(256):  # 16 MiB of one trailer value, never ended
                writer.write(b"t" * 65536)
                await writer.drain()
            await asyncio.sleep(30)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = UpstreamPool(1.0, 1.0)
    try:
        resp = await pool.request(address, _HEAD, b"{}")
        try:
            with pytest.raises(UpstreamError, match="chunk lines or trailers too large"):
                while await asyncio.wait_for(resp.read_chunk(), 5):
                    pass
            assert resp._conn._wire < 2 * 1024 * 1024  # refused within a few reads of the line
        finally:
            resp.release()
    finally:
        pool.close()
        server.close()


# --- review s8-gw R3, N1, N2 --------------------------------------------------------------------------------


async def test_an_answer_before_the_request_was_all_written_keeps_the_connection_out_of_the_pool():
    """R3: a server that answers (413, keep-alive) before reading a large body: the rest of that body is
    still in the write buffer, so the connection is not reused (the next request would follow it)."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if first:  # answer at once, never read the body
                writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(30)
            else:
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = UpstreamPool(1.0, 5.0)
    big = b"x" * (32 << 20)
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(big)
    try:
        resp = await asyncio.wait_for(pool.request(address, head, big), 5)
        assert resp.status == 413 and await read_body(resp) == b""
        resp.release()
        small = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"
        resp = await asyncio.wait_for(pool.request(address, small, b"{}"), 5)
        assert await asyncio.wait_for(read_body(resp), 5) == b"ok"
        resp.release()
        assert connections == 2
    finally:
        pool.close()
        server.close()


async def test_the_resend_after_a_stale_idle_connection_goes_on_a_new_connection():
    """N1: the request found its kept-alive connection closed by the server (no byte back) is sent once
    more on a new connection, not on another idle one that may be just as stale."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:  # each connection answers one request and closes silently on the next
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"
    pool = UpstreamPool(1.0, 5.0)
    try:
        first = await asyncio.gather(pool.request(address, head, b"{}"), pool.request(address, head, b"{}"))
        for resp in first:  # two idle connections, both to be closed on their next request
            assert await read_body(resp) == b"ok"
            resp.release()
        resp = await asyncio.wait_for(pool.request(address, head, b"{}"), 5)
        assert await read_body(resp) == b"ok"
        resp.release()
        assert connections == 3
    finally:
        pool.close()
        server.close()


async def test_an_idle_connection_with_unasked_bytes_is_never_handed_out_again():
    """N2: after unasked bytes the connection is out of the pool at once, not when connection_lost runs."""
    server = await asyncio.start_server(_answer_ok_forever, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n"
    pool = UpstreamPool(1.0, 5.0)
    try:
        resp = await pool.request(address, head, b"{}")
        conn = resp._conn
        assert await read_body(resp) == b"ok"
        resp.release()
        conn.data_received(b"HTTP/1.1 200 OK\r\n")  # unasked, while idle
        assert pool._take_idle(address) is None  # (same loop turn: connection_lost has not run)
    finally:
        pool.close()
        server.close()


async def _answer_ok_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    writer.close()
