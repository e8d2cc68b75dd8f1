"""qa24 F6: a client's ``x-request-id`` over 256 characters or with a character outside printable ASCII
is replaced by a generated one in both doors (logged, cut short), not echoed and forwarded.

Before, ``kvgate serve`` forwarded a 9,000-byte id, which the model server (aiohttp's 8,190-byte line
limit here, as the simulator's) refused with its own text/plain 400, passed to the client; and echoed it
in the answer's head, which an aiohttp client with default limits cannot read. ``kvgate epp`` passed it on
the same way. Real HTTP on loopback (``gateway.backend.Backend`` behind a ``GatewayServer``) and the
ext_proc exchange over real gRPC (``tests/extproc/test_request_id_bounded_epp_qa24.py``)."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway

BODY = {"model": "m", "prompt": "x", "max_tokens": 1}


async def test_an_overlong_request_id_is_replaced_not_forwarded(caplog: pytest.LogCaptureFixture) -> None:
    b = await Backend("b").start()
    try:
        async with (
            running_gateway(make_config([b.address])) as gw,
            aiohttp.ClientSession(max_line_size=32768, max_field_size=32768) as s,
        ):
            with caplog.at_level(logging.INFO, "kvgate.gateway"):
                async with s.post(
                    base_url(gw) + "/v1/completions", json=BODY, headers={"x-request-id": "a" * 9000}
                ) as r:
                    text = await r.text()
                    status, echoed = r.status, r.headers.get("x-request-id", "")
            async with s.post(
                base_url(gw) + "/v1/completions", json=BODY, headers={"x-request-id": "k" * 256}
            ) as r:
                await r.read()
                kept = r.headers.get("x-request-id")
        assert status == 200, f"{status}: {text[:120]}"
        sent = [h["x-request-id"] for _, h, _ in b.received]
        assert echoed == sent[0] and 0 < len(echoed) <= 256, (len(echoed), len(sent[0]))
        assert kept == sent[1] == "k" * 256  # at the bound: the client's, as before
        assert any("replaced by a generated one" in r.getMessage() for r in caplog.records)
    finally:
        await b.stop()
