"""The client-facing HTTP/1.1 parser and connection handling, over raw sockets."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.conftest import base_url, make_config, running_gateway

BODY = b'{"model":"m","prompt":"x","max_tokens":1}'


def _req(body: bytes = BODY, extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (
        f"POST /v1/completions {version}\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _exchange(port: int, raw: bytes, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(wait_s):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


async def test_pipelined_requests_are_answered_in_order_and_http10_closes(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        raw = b"".join(
            _req(orjson.dumps({"model": "m", "prompt": f"p{i}", "max_tokens": 1})) for i in range(3)
        )
        raw += b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out = await _exchange(gw.port, raw)
        assert out.count(b"HTTP/1.1 200 OK") == 4
        assert out.rstrip().endswith(b"ok")  # the last answer is the healthz, in order
        assert [body["prompt"] for _, _, body in b.received] == ["p0", "p1", "p2"]
        out = await _exchange(gw.port, _req(version="HTTP/1.0"))  # no keep-alive: server closes
        assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out


async def test_chunked_request_body(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:

        async def gen():
            for piece in (BODY[:10], BODY[10:25], BODY[25:]):
                yield piece

        async with s.post(base_url(gw) + "/v1/completions", data=gen()) as r:
            assert r.status == 200
        assert b.received[-1][2]["prompt"] == "x"


async def test_malformed_requests_get_400_and_a_closed_connection(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        cases = {
            b"GARBAGE\r\n\r\n": b"400",
            b"POST /v1/completions HTTP/2.0\r\n\r\n": b"400",
            _req(extra="X-Bad: a\nb\r\n"): b"400",  # bare LF inside a header line
            _req(extra=" folded\r\n"): b"400",  # obsolete line folding
            _req(extra="Transfer-Encoding: chunked\r\n"): b"400",  # smuggling attempt
            _req(extra="Transfer-Encoding: gzip\r\n".replace("Content-Length", "")): b"400",
            b"POST /v1/completions HTTP/1.1\r\nContent-Length: 12x\r\n\r\n": b"400",
            b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": b"400",
            b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n": b"431",
        }
        for raw, status in cases.items():
            out = await _exchange(gw.port, raw)
            assert out.startswith(b"HTTP/1.1 " + status), (raw[:60], out[:80])
            assert b"Connection: close" in out
        assert not b.received
        async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200  # still serving


@settings(
    max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=60),
            st.sampled_from(
                [
                    b"\r\n",
                    b"\r\n\r\n",
                    b"POST ",
                    b"GET ",
                    b" HTTP/1.1",
                    b"/v1/completions",
                    b"Content-Length: 5",
                    b"Transfer-Encoding: chunked",
                    b":",
                    b"0\r\n\r\n",
                    BODY,
                ]
            ),
        ),
        max_size=12,
    )
)
def _collect_random_requests(chunks):
    raw = b"".join(chunks)
    results.append(raw)


results: list[bytes] = []


async def test_fuzz_raw_bytes(backends):
    (b,) = await backends(1)
    results.clear()
    _collect_random_requests()  # hypothesis draws the inputs (sync); they are sent below
    async with running_gateway(make_config([b.address])) as gw:
        outs = await asyncio.gather(*(_exchange(gw.port, raw, wait_s=0.5) for raw in results))
        for raw, out in zip(results, outs, strict=True):
            if out:
                status = int(out[9:12])
                assert status < 500 or status == 501, (raw, out[:100])
        async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200


async def test_idle_and_stalled_connections_are_closed(backends):
    (b,) = await backends(1)
    limits = {"keepAliveSeconds": 0.3, "headerTimeoutSeconds": 0.3}
    async with running_gateway(make_config([b.address], extra={"limits": limits})) as gw:
        loop = asyncio.get_running_loop()
        t = loop.time()
        out = await _exchange(gw.port, _req(), wait_s=5)  # answered, then closed once idle
        assert out.startswith(b"HTTP/1.1 200") and loop.time() - t < 4
        t = loop.time()
        out = await _exchange(gw.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", wait_s=5)
        # A half-sent request does not hold the socket forever: the header deadline answers 408.
        assert out.startswith(b"HTTP/1.1 408") and loop.time() - t < 4


async def test_keepalive_never_cuts_a_busy_connection(backends):
    # A stream that lasts several keep-alive periods: only idle connections are swept.
    (b,) = await backends(1, tokens=4, chunk_delay=0.25)
    async with running_gateway(make_config([b.address], extra={"limits": {"keepAliveSeconds": 0.2}})) as gw:
        body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 4})
        out = await _exchange(gw.port, _req(body), wait_s=5)
        assert out.startswith(b"HTTP/1.1 200") and out.count(b"data: ") == 5  # 4 tokens + [DONE]


async def test_http10_stream_is_close_delimited_and_head_has_no_body(backends):
    (b,) = await backends(1, tokens=3)
    async with running_gateway(make_config([b.address])) as gw:
        body = orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 3})
        out = await _exchange(gw.port, _req(body, version="HTTP/1.0"))
        head, _, payload = out.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in head and b"Connection: close" in head
        assert payload.startswith(b"data: ") and payload.endswith(b"data: [DONE]\n\n")  # no chunk framing
        out = await _exchange(gw.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\n")
