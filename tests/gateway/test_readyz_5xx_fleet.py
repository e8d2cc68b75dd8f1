"""s17-fixes-b L1: eedcd64 counts an endpoint ready when its /metrics scrape got ANY HTTP answer
(``Endpoint.answered_at`` is set before the status is looked at), 5xx included. A fleet where everything
answers 503 (a mesh sidecar / LB in front of a dead or draining model server) serves no request, yet
``/readyz`` says 200: a readinessProbe keeps a gateway in service that fails every request. The motive
(SGLang without --enable-metrics: 404) needs 4xx only.
Run: cd /work/main && PYTHONPATH=src:tests .venv/bin/python -m pytest -c pyproject.toml -q \
  /work/team/reviews/s17-fixes-b-tests/test_readyz_5xx_fleet.py
"""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.conftest import make_config, running_gateway
from gateway.test_big_json_answer import _resp


async def _handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            _line, *rest = head.decode("latin-1").split("\r\n")
            hdrs = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in rest if x)}
            if n := int(hdrs.get("content-length", "0")):
                await r.readexactly(n)
            w.write(_resp(503, b"upstream connect error or disconnect/reset before headers"))
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        w.close()


async def test_a_fleet_answering_503_everywhere_is_not_ready():
    server = await asyncio.start_server(_handle, "127.0.0.1", 0)
    addr = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    cfg = make_config(
        [addr],
        extra={
            "listen": {"adminPort": 0},
            "health": {"metricsStalenessSeconds": 1, "scrapeFailures": 3},
            "scrapeIntervalSeconds": 0.1,
        },
    )
    try:
        async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as s:
            await asyncio.sleep(1.5)  # > scrapeFailures scrape intervals
            async with s.post(
                f"http://127.0.0.1:{gw.port}/v1/completions", json={"model": "m", "prompt": "x"}
            ) as r:
                served = r.status
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as r:
                ready = (r.status, await r.text())
            assert served >= 500
            assert ready[0] == 503, f"every request fails ({served}) but /readyz says {ready}"
    finally:
        server.close()
