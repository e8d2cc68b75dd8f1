"""qa32a Q5 on the other fronts: ``kvgate serve --clusters`` (its data port and its admin port) and a
``--workers`` supervisor's admin port answer a request for a path no route takes (404; on the supervisor's
admin port also a method an admin path does not take, 405) from its head when it asks ``Expect:
100-continue``, instead of a ``100 Continue`` that makes the client upload its body for a refusal known
before any byte of it (``FrontServer.route_check``, set by ``kvgate serve`` since ab6ca358). A routed POST
still gets its 100 (the control). Fails on main 965eb147: ``100 Continue`` first."""

from __future__ import annotations

import asyncio

import pytest

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway import workers
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

HEAD = (
    b"%s %s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4000000\r\n\r\n"  # (no body sent)
)


async def _first_head(port: int, method: bytes, path: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HEAD % (method, path))
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    finally:
        writer.close()


@pytest.mark.parametrize("own_admin_port", [False, True], ids=["data-port", "admin-port"])
async def test_clusters_answers_no_route_from_the_head(own_admin_port: bool) -> None:
    # (a cluster address nothing listens on: nothing here is sent to a cluster)
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c0", gateway="127.0.0.1:9"),)), "round-robin", fetch=False
    )
    await gw.start("127.0.0.1", 0, admin_port=0 if own_admin_port else None)
    try:
        first = await _first_head(gw.port, b"POST", b"/v1/no-such-api")
        assert first.startswith(b"HTTP/1.1 404 "), first
        routed = await _first_head(gw.port, b"POST", b"/v1/chat/completions")
        assert routed == b"HTTP/1.1 100 Continue\r\n\r\n", routed
        if own_admin_port:
            assert gw.admin_port is not None
            first = await _first_head(gw.admin_port, b"POST", b"/v1/chat/completions")
            assert first.startswith(b"HTTP/1.1 404 "), first
    finally:
        await gw.stop()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        (b"POST", b"/v1/no-such-api", b"404"),
        (b"POST", b"/metrics", b"405"),
        (b"DELETE", b"/readyz", b"405"),
    ],
    ids=["404", "405", "405-readyz"],
)
async def test_the_supervisors_admin_port_answers_from_the_head(
    method: bytes, path: bytes, status: bytes
) -> None:
    pool = {"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}
    sup = workers.Supervisor(
        parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1", "adminPort": 0}}), 1
    )
    await sup.serve_admin()
    try:
        assert sup.admin_port is not None
        first = await _first_head(sup.admin_port, method, path)  # (no worker runs: none is asked)
        assert first.split(b" ")[1] == status, first
        if status == b"405":
            assert b"Allow: GET, HEAD" in first, first
    finally:
        assert sup._admin is not None
        sup._admin.close()
        if sup._admin_front is not None:
            sup._admin_front.close_all()
        await sup._admin.wait_closed()
