"""The data path around the head wait (inline in 1210797, back in ``_Conn._wait`` since session 13) and
``_prepare`` (632bccb), over loopback: a client gone during the head wait, short / long / chunked bodies,
a kept-alive connection closed while idle, the request and idle deadlines, bad requests, and the head
timer racing the head (review s12-tp's probes, regression coverage)."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, request_errors, running_gateway, until

OK_BODY = orjson.dumps(
    {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)


def ok_reply(body: bytes = OK_BODY) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        len(body),
        body,
    )


class Raw:
    """A raw upstream: ``behave(n, reader, writer)`` per request; counts connections and requests."""

    def __init__(self, behave):
        self.behave = behave
        self.conns = 0
        self.requests = 0
        self.eofs = 0
        self.arrived = asyncio.Event()

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader, writer):
        self.conns += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.eofs += 1
                    return
                n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
                self.requests += 1
                self.arrived.set()
                if await self.behave(self.requests, reader, writer) is False:
                    return
        finally:
            writer.close()


async def _post(gw, body=b'{"model": "m", "prompt": "x"}', headers=None):
    url = base_url(gw) + "/v1/completions"
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.read()


async def test_client_gone_during_head_wait_drops_upstream_and_no_unretrieved():
    loop = asyncio.get_running_loop()
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))

    async def hang(n, r, w):
        if await r.read(1) == b"":
            up.eofs += 1
        return False

    up = await Raw(hang).start()
    async with running_gateway(make_config([up.address])) as gw:
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        body = b'{"model": "m", "prompt": "x"}'
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
        )
        await asyncio.wait_for(up.arrived.wait(), 30)
        writer.close()
        await asyncio.wait_for(gw.proxy.idle.wait(), 30)
        await until(lambda: up.eofs >= 1)
        assert up.eofs == 1  # upstream saw the connection dropped
        assert not any(c for cs in gw.proxy.upstream._idle.values() for c in cs)
        assert request_errors(gw) == {("m", "m", "client_gone"): 1.0}
    gc.collect()
    await asyncio.sleep(0.05)
    assert not seen, seen
    up.server.close()


async def test_short_body_then_close_is_retried_elsewhere():
    async def short(n, r, w):
        w.write(ok_reply()[:-5])
        await w.drain()
        return False

    async def good(n, r, w):
        w.write(ok_reply())
        await w.drain()

    a, b = await Raw(short).start(), await Raw(good).start()
    cfg = make_config([a.address, b.address], extra={"health": {"ejectAfterFailures": 1000}})
    async with running_gateway(cfg) as gw:
        for _ in range(4):
            status, body = await _post(gw)
            assert status == 200, body
            assert orjson.loads(body)["choices"][0]["text"] == "hi"
        assert a.requests >= 1 and b.requests == 4
        assert gw.metrics.retries._value.get() == a.requests


async def test_longer_body_than_length_not_reused():
    async def extra(n, r, w):
        w.write(ok_reply() + b"GARBAGE")
        await w.drain()

    up = await Raw(extra).start()
    async with running_gateway(make_config([up.address])) as gw:
        for _ in range(3):
            status, body = await _post(gw)
            assert status == 200 and orjson.loads(body)["choices"][0]["text"] == "hi"
        await asyncio.sleep(0.1)
        assert up.conns >= 3, up.conns  # never reused after the extra bytes


async def test_chunked_in_pieces():
    async def chunked(n, r, w):
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        await w.drain()
        for i in range(0, len(OK_BODY), 20):
            piece = OK_BODY[i : i + 20]
            w.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")
        await w.drain()

    up = await Raw(chunked).start()
    async with running_gateway(make_config([up.address])) as gw:
        for _ in range(3):
            status, body = await _post(gw)
            assert status == 200 and orjson.loads(body) == orjson.loads(OK_BODY)
        assert up.conns == 1  # kept alive and reused


async def test_keepalive_closed_while_idle_is_resent():
    async def once(n, r, w):
        w.write(ok_reply())
        await w.drain()
        return False  # close after each reply without saying so

    up = await Raw(once).start()
    async with running_gateway(make_config([up.address])) as gw:
        for _ in range(4):
            status, body = await _post(gw)
            assert status == 200, body
            await asyncio.sleep(0.05)
        assert gw.metrics.retries._value.get() == 0


async def test_request_timeout_during_head_wait_counts_once():
    async def hang(n, r, w):
        if await r.read(1) == b"":
            up.eofs += 1
        return False

    up = await Raw(hang).start()
    cfg = make_config([up.address], extra={"limits": {"requestTimeoutSeconds": 0.3}})
    async with running_gateway(cfg) as gw:
        status, body = await _post(gw)
        assert status in (503, 504), body
        err = orjson.loads(body)["error"]
        assert err["code"], err
        await until(lambda: up.eofs >= 1)
        assert request_errors(gw) == {("m", "m", str(status)): 1.0}, request_errors(gw)


async def test_head_then_body_stalls_past_idle_timeout_retried():
    async def stall(n, r, w):
        w.write(ok_reply()[:-5])
        await w.drain()
        await asyncio.sleep(30)

    async def good(n, r, w):
        w.write(ok_reply())
        await w.drain()

    a, b = await Raw(stall).start(), await Raw(good).start()
    cfg = make_config(
        [a.address, b.address],
        extra={"limits": {"idleTimeoutSeconds": 0.3}, "health": {"ejectAfterFailures": 1000}},
    )
    async with running_gateway(cfg) as gw:
        for _ in range(2):
            status, body = await _post(gw)
            assert status == 200, body


async def test_bad_requests_json_errors_and_counts():
    async def good(n, r, w):
        w.write(ok_reply())
        await w.drain()

    up = await Raw(good).start()
    cfg = make_config([up.address], extra={"limits": {"maxBodyBytes": 1000}})
    async with running_gateway(cfg) as gw:
        cases = [
            (b"not json", 400),
            (b'{"model": 3, "prompt": "x"}', 400),
            (b'{"model": "nope", "prompt": "x"}', 404),
            (b'{"model": "m", "prompt": "' + b"x" * 2000 + b'"}', 413),
            (b'{"model": "m", "prompt": "x", "stream": true, "stream_options": 1}', 400),
        ]
        for body, want in cases:
            status, out = await _post(gw, body)
            assert status == want, (body[:40], status, out)
            assert "error" in orjson.loads(out), out
        assert request_errors(gw) == {("", "", "400"): 3.0, ("", "", "404"): 1.0, ("", "", "413"): 1.0}


async def test_timer_and_head_in_the_same_loop_pass():
    from kvgate.gateway.upstream import UpstreamPool, UpstreamTimeout

    got = asyncio.Event()

    async def serve(reader, writer):
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except Exception:
                return
            got.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
    for order in ("head_first", "timer_first"):
        pool = UpstreamPool(1.0, 30.0)
        got.clear()
        task = asyncio.create_task(pool.request(f"127.0.0.1:{port}", head, b""))
        await got.wait()
        for _ in range(20):
            await asyncio.sleep(0)
        conn = next(iter(pool._open))
        assert conn.waiter is not None
        reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        if order == "head_first":
            conn.data_received(reply)
            conn._timeout()
            resp = await task
            assert resp.read_now() == b"ok"
            resp.release()
            assert pool._idle[f"127.0.0.1:{port}"] == [conn]
        else:
            conn._timeout()
            conn.data_received(reply)
            try:
                await task
                raise AssertionError("no timeout")
            except UpstreamTimeout:
                pass
            assert conn.waiter is None
            await until(lambda c=conn: c.closed)
            assert not pool._idle.get(f"127.0.0.1:{port}")
        pool.close()
    server.close()
