"""Session 17's closing note: an HTTP/1.0 client of a relayed answer (past ``whole_max``, relayed as it
arrives) got a body delimited by the close only, although the upstream's Content-Length was known.
Now it is told the length when the body goes out unchanged in length (no model name put back, or one of
the same length); a rename that changes the length keeps the close-delimited body. A cut still resets
the connection (``tests/gateway/test_http10_cut.py``, ``test_http10_reset_paths.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.conftest import make_config, running_gateway
from gateway.test_big_json_answer import RawServer, answer_body


def _rename(client: str) -> dict[str, Any]:
    rule = {"matches": [{"model": {"type": "Exact", "value": client}}], "targets": [{"modelRewrite": "m"}]}
    return {"rewrites": [rule]}


async def _http10(port: int, model: str) -> tuple[bytes, bytes]:
    raw = orjson.dumps({"model": model, "prompt": "x"})
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        b"POST /v1/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(raw), raw)
    )
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        return head, await asyncio.wait_for(r.read(), 10)
    finally:
        w.close()


def _content_length(head: bytes) -> int | None:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return None


@pytest.mark.parametrize(
    ("client_model", "told"),
    [("m", True), ("x", True), ("a-longer-name", False)],  # as sent; renamed, same length; longer
)
async def test_an_http10_client_gets_the_upstream_length_of_a_relayed_answer(client_model, told):
    body = answer_body(300_000)
    s = await RawServer(body, piece=8192).start()
    try:
        renamed = client_model != "m"
        models = (client_model, "m") if renamed else ("m",)
        extra = _rename(client_model) if renamed else None
        async with running_gateway(make_config([s.address], models=models, extra=extra)) as gw:
            gw.proxy.whole_max = 100_000  # relayed as it arrives
            head, got = await _http10(gw.port, client_model)
        want = body.replace(b'"model":"m"', b'"model":' + orjson.dumps(client_model), 1)
        assert got == want
        assert b"transfer-encoding" not in head.lower()
        assert _content_length(head) == (len(want) if told else None), head
        assert b"connection: close" in head.lower()
    finally:
        await s.stop()
