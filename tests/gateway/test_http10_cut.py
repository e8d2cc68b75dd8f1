"""s17-bigbody L: an HTTP/1.0 client of a relayed (> whole_max) answer cut upstream after bytes went out
sees a clean close, i.e. a truncated JSON body delivered as complete (HTTP/1.0: no chunked encoding, the
body is delimited by the close, ``StreamResponse.prepare``), although the upstream's Content-Length was
known. Run: cd /work/main && PYTHONPATH=src:tests .venv/bin/python -m pytest -c pyproject.toml -q
/work/team/reviews/s17-bigbody-tests/test_bigbody_http10_cut.py
"""

from __future__ import annotations

import asyncio

import orjson

from gateway.conftest import make_config, running_gateway
from gateway.test_big_json_answer import RawServer, answer_body


async def test_http10_client_does_not_get_a_cut_body_as_complete():
    body = answer_body(300_000)
    s = await RawServer(body, piece=8192, cut_after=200_000).start()
    try:
        async with running_gateway(make_config([s.address])) as gw:
            gw.proxy.whole_max = 100_000
            raw = orjson.dumps({"model": "m", "prompt": "x"})
            r, w = await asyncio.open_connection("127.0.0.1", gw.port)
            w.write(
                b"POST /v1/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%b" % (len(raw), raw)
            )
            try:
                head = await r.readuntil(b"\r\n\r\n")
                got = await r.read()  # to the close
                clean = True
            except (ConnectionError, asyncio.IncompleteReadError):
                clean = False
            w.close()
            if clean:
                # A client may only take a close-delimited body as complete if it is: it must either be
                # told the length (Content-Length) or see the connection reset.
                cl = [ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
                assert (cl and int(cl[0].split(b":")[1]) != len(got)) or len(got) == len(body), (
                    f"HTTP/1.0 client got {len(got)} of {len(body)} bytes, a clean close, no Content-Length: "
                    f"head={head!r}"
                )
    finally:
        await s.stop()
