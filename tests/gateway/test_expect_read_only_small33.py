"""small33 (c): a method other than GET or HEAD on a read-only prefix path (``/debug/picks/<id>`` on ``kvgate
serve``'s admin routes, on its own admin port and on a ``--workers`` supervisor's; ``/v1/models/<id>`` and
``/v1/models``) asking ``Expect: 100-continue`` got ``100 Continue`` before its 405, so the client uploaded
its body for a refusal the head alone decides (qa32a Q5 / late-a32 answered the exact admin paths and the
API paths from the head, not these). Now the 405 comes from the head, the same answer the handler gives.
Fails on main 24a33356: ``100 Continue`` first. ``GET``'s 100 is the control (a read with a body is
still the handler's)."""

from __future__ import annotations

import pytest

from expect_head import EXPECT, answer, check_405_from_the_head
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway import workers
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer


def _config(own_admin_port: bool) -> dict[str, object]:
    listen: dict[str, object] = {"host": "127.0.0.1", "port": 0}
    if own_admin_port:
        listen["adminPort"] = 0
    # (an endpoint address nothing listens on: nothing here is sent to one)
    return {"pools": [{"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}], "listen": listen}


CASES = [(b"POST", b"/debug/picks/abc"), (b"DELETE", b"/debug/picks/abc")]
DATA_CASES = [*CASES, (b"POST", b"/v1/models/m"), (b"PUT", b"/v1/models")]


@pytest.mark.parametrize(("method", "path"), DATA_CASES, ids=lambda v: v.decode())
async def test_serve_data_port_answers_read_only_prefixes_from_the_head(method: bytes, path: bytes) -> None:
    cfg = parse_gateway_config(_config(False))
    gw = GatewayServer(cfg, [build_pool(p) for p in cfg.pools])
    await gw.start()
    try:
        await check_405_from_the_head(gw.port, method, path)
        head, _ = await answer(gw.port, EXPECT % (b"GET", path))  # (the control)
        assert head == b"HTTP/1.1 100 Continue\r\n\r\n", head
    finally:
        await gw.stop(drain_timeout=1.0)


@pytest.mark.parametrize(("method", "path"), CASES, ids=lambda v: v.decode())
async def test_serve_admin_port_answers_debug_picks_from_the_head(method: bytes, path: bytes) -> None:
    cfg = parse_gateway_config(_config(True))
    gw = GatewayServer(cfg, [build_pool(p) for p in cfg.pools])
    await gw.start()
    try:
        assert gw.admin_port is not None
        await check_405_from_the_head(gw.admin_port, method, path)
    finally:
        await gw.stop(drain_timeout=1.0)


@pytest.mark.parametrize(("method", "path"), CASES, ids=lambda v: v.decode())
async def test_the_supervisors_admin_port_answers_debug_picks_from_the_head(
    method: bytes, path: bytes
) -> None:
    sup = workers.Supervisor(parse_gateway_config(_config(True)), 1)
    await sup.serve_admin()
    try:
        assert sup.admin_port is not None
        await check_405_from_the_head(sup.admin_port, method, path)  # (no worker runs: none is asked)
    finally:
        assert sup._admin is not None
        sup._admin.close()
        if sup._admin_front is not None:
            sup._admin_front.close_all()
        await sup._admin.wait_closed()
