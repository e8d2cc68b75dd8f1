"""Review s23-rev-gw23 F4: ``kvgate hub-controller``'s health port (``/healthz``, ``/readyz``,
``/v1/status``: GET-only, a FrontServer with no method check) still answers POST / PUT / DELETE as a GET,
200, after gw23's 405 for the gateway's admin routes (``httpfront.server.get_only`` not applied there).
Real HTTP on loopback; port from the reviewer's range, else ephemeral."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from kvgate.multicluster.hub_controller import _health

pytestmark = pytest.mark.asyncio


class _Hub:
    def dead(self) -> None:
        return None

    def problem(self) -> None:
        return None

    def status(self) -> dict[str, object]:
        return {}


async def test_hub_controller_health_routes_refuse_other_methods() -> None:
    front = _health(_Hub())  # type: ignore[arg-type]
    srv = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as s:
            got = {}
            for method in ("POST", "PUT", "DELETE"):
                for path in ("/healthz", "/readyz", "/v1/status"):
                    async with s.request(method, f"http://127.0.0.1:{port}{path}") as r:
                        got[(method, path)] = (r.status, r.headers.get("Allow"))
        # FAILS on main 470c6a1c (and at 83f8785f): every one is (200, None)
        assert all(v == (405, "GET, HEAD") for v in got.values()), got
    finally:
        srv.close()
        front.close_all()
        await srv.wait_closed()
