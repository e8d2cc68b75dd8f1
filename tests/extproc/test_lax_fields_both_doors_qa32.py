"""qa32a Q1: both doors serve the typed fields vLLM 0.32's lax pydantic models take (``"stream": "true"`` /
``1``, ``"max_tokens": "5"``, ``"max_completion_tokens": "7"``, ``"n": "2"``), the body sent on as it is.
Fails on main aa46aa9a: every case a 400 at both doors (``'stream' must be a boolean`` / ...)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway.conftest import backends, make_config, running_gateway  # noqa: F401 (the fixture)
from kvgate.extproc.testing import EnvoyHarness

LAX = [
    {"stream": "true"},
    {"stream": 1},
    {"max_tokens": "5"},
    {"max_completion_tokens": "7"},
    {"n": "2"},
]


def _body(extra: dict) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


def _id(extra: dict) -> str:
    return "-".join(f"{k}={v!r}" for k, v in extra.items())


@pytest.mark.parametrize("extra", LAX, ids=_id)
async def test_kvgate_serve_forwards_what_vllm_takes(backends, extra) -> None:  # noqa: F811
    (b,) = await backends(1)
    async with (
        running_gateway(make_config([b.address])) as gw,
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", data=_body(extra)) as r,
    ):
        status, text = r.status, await r.read()
    assert status == 200, (status, text)
    (_, _, sent) = b.received[0]
    assert {k: sent[k] for k in extra} == extra  # (sent on as the client wrote it)


@pytest.mark.parametrize("extra", LAX, ids=_id)
async def test_kvgate_epp_routes_what_vllm_takes(backends, start_epp, extra) -> None:  # noqa: F811
    (b,) = await backends(1)
    epp = await start_epp([b.address])
    async with aiohttp.ClientSession() as http:
        res = await EnvoyHarness(epp.stub, http).request("POST", "/v1/chat/completions", _body(extra))
    assert res.status == 200, (res.status, res.body[:300])
