"""Review s20-qa L4: the HTTP front's request line. RFC 9112 §3.2.2: a server MUST accept the absolute-form
(``POST http://gw/v1/completions HTTP/1.1``, sent by a client that has the gateway as its HTTP proxy): it
was ``404 no route for POST http://...``; now routed by its path, its authority as ``Host``. RFC 9112 §2.2:
a server SHOULD skip at least one empty line before a request line (an old client's extra CRLF after a POST
body): it was ``400 malformed HTTP request: not enough values to unpack (expected 3, got 1)``; now skipped
(any number). A request line not of three parts is ``400 malformed request line``, not a Python message.
(The head parser's one-pass header read has its own property test in test_hot_path.py; this extends the
fuzzing to the request line, whole and cut at any byte.)"""

from __future__ import annotations

import asyncio

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.conftest import make_config, running_gateway
from gateway.test_hot_path import _parsed, _Transport
from kvgate.httpfront.server import FrontServer, Request, Response

_HOST = st.text("abcxyz0123456789.-", min_size=1, max_size=12) | st.sampled_from(["[::1]", "127.0.0.1"])
_PORT = st.sampled_from(["", ":80", ":8080"])
_PATH = st.lists(st.text("abz09-_.~%", min_size=0, max_size=5), min_size=0, max_size=3).map("/".join)
_QUERY = st.sampled_from(["", "?", "?a=1", "?a=1&b=/x?y"])


@settings(max_examples=300, deadline=None)
@given(
    empty_lines=st.integers(0, 3),
    scheme=st.sampled_from([None, "http", "https", "HTTP"]),
    host=_HOST,
    port=_PORT,
    path=_PATH,
    query=_QUERY,
    cut=st.floats(0.0, 1.0),
)
@example(empty_lines=1, scheme="http", host="127.0.0.1", port="", path="a", query="", cut=0.0)
@example(empty_lines=1, scheme="http", host="h", port="", path="", query="?a=1", cut=0.01)
def test_request_line_forms_read_alike_whole_or_cut(
    empty_lines: int, scheme: str | None, host: str, port: str, path: str, query: str, cut: float
) -> None:
    """Origin-form or absolute-form, after 0..3 empty lines: the handler sees the path (``/`` for an
    absolute-form without one), the query, and the authority as ``Host``; the same fed whole or in two
    reads cut anywhere (a lone CR, a CRLF split). Before fixqa20c: absolute-form paths were the whole
    target, and an empty line first was 400."""
    authority = host + port
    target = f"{scheme}://{authority}/{path}{query}" if scheme else f"/{path}{query}"
    raw = b"\r\n" * empty_lines + (
        f"POST {target} HTTP/1.1\r\nHost: other\r\nContent-Length: 2\r\n\r\nhi".encode()
        + b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    at = int(cut * len(raw))

    async def main() -> None:
        whole, out = await _parsed([raw])
        assert out.count(b"HTTP/1.1 200 ") == 2, out[:200]
        (method, got_path, got_query, headers, body, _, _), second = whole
        assert (method, got_path, got_query, body) == ("POST", f"/{path}", query[1:], b"hi")
        assert headers["host"] == (authority if scheme else "other")
        assert second[:2] == ("GET", "/a")
        if 0 < at < len(raw):
            assert await _parsed([raw[:at], raw[at:]]) == (whole, out), at

    asyncio.run(main())


async def test_empty_lines_between_kept_alive_requests_are_skipped() -> None:
    """An extra CRLF after a POST body, alone in its read, then the next request later: both answered."""
    post = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi\r\n"
    seen, out = await _parsed([post, b"\r\n", b"\r", b"\nGET /a HT", b"TP/1.1\r\nHost: h\r\n\r\n"])
    assert [s[:2] for s in seen] == [("POST", "/a"), ("GET", "/a")] and out.count(b"HTTP/1.1 200 ") == 2, out


async def test_malformed_request_lines_say_so_not_python() -> None:
    for line in (
        b"GET /a",  # no version
        b"GET  /a HTTP/1.1",  # two spaces
        b"GET /a b HTTP/1.1",  # a space in the target
        b"GET /a HTTP/1.1 x",
    ):
        seen, out = await _parsed([line + b"\r\nHost: h\r\n\r\n"])
        assert not seen and out.startswith(b"HTTP/1.1 400 "), (line, out[:80])
        message = orjson.loads(out.partition(b"\r\n\r\n")[2])["error"]["message"]
        assert message == "malformed request line", (line, message)
    # no authority, userinfo, a control byte
    for target in (b"http:///a", b"http://u@h/a", b"http://h\x7f/a"):
        seen, out = await _parsed([b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"])
        assert not seen and out.startswith(b"HTTP/1.1 400 "), (target, out[:80])
    # Not absolute-form (no scheme it knows): routed as it is, so no route takes it
    seen, _ = await _parsed([b"GET ftp://h/a HTTP/1.1\r\nHost: h\r\n\r\n"])
    assert [s[1] for s in seen] == ["ftp://h/a"]


async def test_kvgate_serve_answers_both_forms(backends) -> None:
    """Through the gateway to a model server (review s20-qa's repro): both 200. Before fixqa20c: 404 no
    route for POST http://127.0.0.1/v1/completions, and 400 not enough values to unpack."""
    bs = await backends(1)
    body = b'{"model":"m","prompt":"x"}'
    async with running_gateway(make_config([bs[0].address])) as gw:
        for prefix, target in ((b"", b"http://127.0.0.1/v1/completions"), (b"\r\n", b"/v1/completions")):
            r, w = await asyncio.open_connection("127.0.0.1", gw.port)
            w.write(
                prefix + b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (target, len(body), body)
            )
            out = await asyncio.wait_for(r.read(), 10)
            w.close()
            assert out.startswith(b"HTTP/1.1 200 "), (prefix, target, out[:200])
    assert len(bs[0].received) == 2


async def test_empty_lines_alone_do_not_keep_a_connection_open_past_keepalive() -> None:
    """Each CRLF re-armed the idle deadline: a client sending one every keepAliveSeconds held a connection
    (one of maxConnections) forever without a request (review s20-fixes-a L1)."""

    async def handler(req: Request) -> Response:
        return Response(body=b"ok")

    server = FrontServer({"/a": handler}, handler, max_body=1 << 20)
    proto = server.protocol()
    transport = _Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    keep = server.keepalive_s
    # The connection has been idle (no request at all) for keepalive - 5 s ...
    t = loop.time()
    proto.idle_since = t - (keep - 5)
    # ... then sends one empty line (nothing else, ever).
    proto.data_received(b"\r\n")
    for _ in range(4):
        await asyncio.sleep(0)
    # 10 s later: keepalive + 5 s without any request, and 10 s (= the header deadline) since the CRLF.
    server.sweep(t + max(10.0, server.header_timeout_s) + 0.1)
    for _ in range(10):
        await asyncio.sleep(0)
    try:
        assert transport.closed or b" 408 " in transport.out or server.timed_out["header"], (
            "a connection that sent only an empty line stayed open past keepAliveSeconds and the header "
            "deadline: each CRLF re-arms the idle deadline (slowloris without a request)"
        )
    finally:
        server.close_all()
