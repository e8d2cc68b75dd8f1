"""Review s26-rev-gw26 F2: a connect that never finished wrote nothing, so the hub's 504 at its bound is
``request_timeout`` (an outer hub then tries its next cluster), as ``kvgate serve`` names "a connect that
outlasted" its bound. Before the fix (6c4d40fa..530ec4f1) ``_post``'s send time, taken before aiohttp
connects, counted as written: the inner hub answered ``upstream_timeout`` and the outer hub passed that to
the client although nothing ran anywhere. The hub now marks the write itself (aiohttp's
``on_request_headers_sent`` trace).

The cluster that never accepts is a loopback listener with a full backlog (Linux drops the SYNs past it;
the client retries them for seconds); the tests skip where the kernel answers them instead. Real HTTP and
gRPC on loopback; the other ports from the OS (port 0)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.test_epp_stall import _scripted, _StallingEpp


async def _post(port: int, stream: bool) -> tuple[int, str | None, dict[str, Any] | bytes]:
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1, "stream": stream})
    url = f"http://127.0.0.1:{port}/v1/completions"
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.post(url, data=body) as r:
        raw = await r.read()
        got: dict[str, Any] | bytes = orjson.loads(raw) if r.status != 200 else raw
        return r.status, r.headers.get("x-kvgate-cluster"), got


@pytest.fixture
def syn_dropper() -> Iterator[str]:
    """A loopback address whose connects never finish: a listener with a full backlog."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=30)  # (fills the accept queue)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel does not drop SYNs past a full backlog")
    except TimeoutError:
        pass
    finally:
        probe.close()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        filler.close()
        lst.close()


async def _behind(inner: GlobalGateway, west: str) -> GlobalGateway:
    outer = GlobalGateway(
        ClustersConfig((ClusterSpec("inner", gateway=f"127.0.0.1:{inner.port}", priority=0),
                        ClusterSpec("west", gateway=west, priority=1))),
        "active-passive", fetch=False, seed=1,
    )  # fmt: skip
    await outer.start("127.0.0.1", 0)
    return outer


async def test_a_connect_that_never_finished_is_retried_by_the_outer_hub(pods: Any, syn_dropper: str) -> None:
    west = await pods()
    inner = GlobalGateway(
        ClustersConfig((ClusterSpec("deep", gateway=syn_dropper),), request_timeout_s=0.5,
                       probe_timeout_s=0.3),
        "round-robin", fetch=False, seed=1,
    )  # fmt: skip
    await inner.start("127.0.0.1", 0)
    outer = await _behind(inner, west.address)
    try:
        # (the inner hub alone: its 504 names a request it never wrote)
        status, _, err = await _post(inner.port, stream=False)
        assert status == 504, err
        assert isinstance(err, dict)
        # FAILS on 530ec4f1: "upstream_timeout" though the connect never finished
        assert err["error"]["code"] == "request_timeout", err
        got = await _post(outer.port, stream=False)
        assert got[:2] == (200, "west"), got  # (nothing ran anywhere: west may take it)
        assert len(west.received) == 1
    finally:
        await outer.stop()
        await inner.stop()


async def test_a_head_timeout_during_the_connect_is_not_a_running_attempt(
    pods: Any, syn_dropper: str
) -> None:
    """A stream's head timeout that passes while the connect still waits moves on with nothing written:
    a later cluster's pick that outlasts the bound is then ``request_timeout`` too (the attempt is not
    ``running``, which F1's fix counts)."""
    west, never = await pods(), await pods()
    epp = _StallingEpp(never.address, "pick")  # (reads the pick's messages, answers none)
    server, epp_port = await _scripted(epp)
    inner = GlobalGateway(
        ClustersConfig((ClusterSpec("a", gateway=syn_dropper, priority=0),
                        ClusterSpec("b", epp=f"127.0.0.1:{epp_port}", priority=1)),
                       head_timeout_s=0.3, epp_timeout_s=60.0, request_timeout_s=1.5),
        "active-passive", fetch=False, seed=1,
    )  # fmt: skip
    await inner.start("127.0.0.1", 0)
    outer = await _behind(inner, west.address)
    try:
        status, _, err = await _post(inner.port, stream=True)
        assert epp.stalled.is_set()  # (b's pick outlasted the bound)
        assert status == 504 and isinstance(err, dict), err
        # FAILS on 530ec4f1: "upstream_timeout" (a's attempt counted as running, though never connected)
        assert err["error"]["code"] == "request_timeout", err
        got = await _post(outer.port, stream=True)
        assert got[:2] == (200, "west"), got
    finally:
        await outer.stop()
        await inner.stop()
        await server.stop(0)
