"""The GET-only admin routes (``/metrics``, ``/healthz``, ``/readyz``, ``/v1/pool/aggregate``,
``/debug/picks/<id>``) answer any other method with 405, ``Allow: GET, HEAD`` and an OpenAI-style JSON
error, as the API routes answer a method they do not take; ``HEAD`` stays allowed where ``GET`` is. On the
data port (no admin port), on a separate admin port, and on a ``--workers`` supervisor's admin port
(session-22 closing note: ``POST /metrics`` answered 200). Real HTTP on loopback."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.conftest import make_config, running_gateway
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway import workers

ADMIN_PATHS = ("/metrics", "/healthz", "/readyz", "/v1/pool/aggregate", "/debug/picks/nope")
METHODS = ("POST", "PUT", "DELETE", "PATCH")


async def _check(port: int, paths: tuple[str, ...]) -> None:
    async with aiohttp.ClientSession() as s:
        for path in paths:
            url = f"http://127.0.0.1:{port}{path}"
            for method in METHODS:
                async with s.request(method, url, data=b"{}") as r:
                    assert r.status == 405, (method, path, r.status, (await r.read())[:200])
                    body = await r.json(content_type=None)
                    assert r.headers["Allow"] == "GET, HEAD", (method, path)
                    assert r.headers["Content-Type"] == "application/json"
                    err = body["error"]
                    assert method in err["message"] and path in err["message"], err
                    assert err["type"] == "invalid_request_error" and "code" in err and "param" in err
            for method in ("GET", "HEAD"):  # (their own answers, whatever they are: never a 405)
                async with s.request(method, url) as r:
                    assert r.status != 405, (method, path)


@pytest.mark.parametrize("own_port", [False, True], ids=["data-port", "admin-port"])
async def test_other_methods_on_admin_routes_get_405(own_port: bool) -> None:
    cfg = make_config(["127.0.0.1:9"], extra={"listen": {"adminPort": 0}} if own_port else None)
    async with running_gateway(cfg) as gw:
        port = gw.admin_port if own_port else gw.port
        assert port is not None
        await _check(port, ADMIN_PATHS)


async def test_other_methods_on_the_supervisors_admin_routes_get_405() -> None:
    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    sup = workers.Supervisor(
        parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1", "adminPort": 0}}), 1
    )
    await sup.serve_admin()
    try:
        assert sup.admin_port is not None
        # (no worker runs: only the refusals, which come before any worker is asked)
        async with aiohttp.ClientSession() as s:
            for path in ADMIN_PATHS:
                for method in METHODS:
                    url = f"http://127.0.0.1:{sup.admin_port}{path}"
                    async with s.request(method, url, data=b"{}") as r:
                        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD", (method, path, r.status)
                        body = await r.json(content_type=None)
                        assert body["error"]["type"] == "invalid_request_error"
    finally:
        assert sup._admin is not None
        sup._admin.close()
        if sup._admin_front is not None:
            sup._admin_front.close_all()
        await sup._admin.wait_closed()
