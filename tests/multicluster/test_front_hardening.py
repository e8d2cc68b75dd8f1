"""The global gateway (``kvgate serve --clusters``) has the single-cluster gateway's client-side hardening
(issue #12), from the same front (``kvgate.httpfront``): OpenAI-style JSON errors with the right statuses,
the body cap, header/body deadlines, the connection cap and the send deadline. Real sockets; each test
fails on the aiohttp front it replaced (plain-text 413 / 404 / 405, no deadlines, no caps)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.backend import free_port
from gateway.test_front import _exchange, _req
from kvgate.httpfront.server import FrontLimits

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})


async def _until(cond: Callable[[], bool], within_s: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while loop.time() < end:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return cond()


def _error(raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON error object and headers of one raw HTTP/1.1 response with a Content-Length body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers.get("content-type") == "application/json", lines
    return int(lines[0].split()[1]), orjson.loads(body)["error"], headers


async def test_errors_are_openai_json_with_the_right_status(pods, gateway) -> None:
    pod = await pods()
    gw = await gateway([pod.address])
    port = gw.port
    status, err, _ = _error(await _exchange(port, _req(b"{not json", extra="Connection: close\r\n")))
    assert status == 400 and err["type"] == "invalid_request_error" and err["message"]
    status, err, _ = _error(await _exchange(port, _req(b'{"prompt": "x"}', extra="Connection: close\r\n")))
    assert status == 400 and err["param"] == "model"
    get = b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, err, _ = _error(await _exchange(port, get))
    assert status == 404 and "/nope" in err["message"]
    wrong = b"GET /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, err, headers = _error(await _exchange(port, wrong))
    assert status == 405 and headers["allow"] == "POST"
    post_metrics = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    status, _, _ = _error(await _exchange(port, post_metrics))
    assert status == 405
    # And a good request still goes through.
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{port}/v1/completions", data=BODY) as r,
    ):
        assert r.status == 200 and r.headers["x-kvgate-route-mode"] == "parent"


async def test_a_body_over_the_cap_gets_a_json_413(pods, gateway) -> None:
    pod = await pods()
    gw = await gateway([pod.address], max_body_bytes=1024)
    big = orjson.dumps({"model": "m", "prompt": "x" * 4096})
    status, err, _ = _error(await _exchange(gw.port, _req(big), wait_s=30))
    assert status == 413 and "1024" in err["message"]
    assert not pod.received  # refused before any cluster saw it


async def test_every_cluster_at_capacity_is_a_429_and_none_reachable_a_503(pods, gateway) -> None:
    a, b = await pods(), await pods()
    a.mode = b.mode = "error429"
    gw = await gateway([a.address, b.address])
    status, err, headers = _error(await _exchange(gw.port, _req(extra="Connection: close\r\n")))
    assert status == 429 and headers["retry-after"] == "1" and "capacity" in err["message"]
    dead = await gateway([f"127.0.0.1:{free_port()}"])
    status, err, _ = _error(await _exchange(dead.port, _req(extra="Connection: close\r\n")))
    assert status == 503 and err["type"] == "service_unavailable" and "every cluster failed" in err["message"]


async def test_slow_heads_and_bodies_get_408_and_the_connection_cap_a_503(pods, gateway) -> None:
    pod = await pods()
    gw = await gateway([pod.address], header_timeout_s=0.5, body_timeout_s=0.5, max_connections=2)
    loop = asyncio.get_running_loop()
    for partial in (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", _req(b"{" + b" " * 100 + b"}")[:-50]):
        t0 = loop.time()
        out = await _exchange(gw.port, partial, wait_s=30)  # never completed (the 408, then the close)
        status, err, _ = _error(out)
        # The 0.5 s deadlines, with room for a loaded machine (tst32: 4 s before); the defaults (10 s for
        # a head, 60 s for a body) would not answer within it.
        assert status == 408 and loop.time() - t0 < 8, (err, loop.time() - t0)
    assert gw.front is not None
    front = gw.front
    held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
    try:
        # The held connections taken by the front (polled; a fixed 0.1 s pause before, tst32).
        assert await _until(lambda: len(front.connections) == 2, 30), "the held connections accepted"
        status, err, _ = _error(await _exchange(gw.port, _req(), wait_s=30))
        assert status == 503 and err["code"] == "too_many_connections"
    finally:
        for _, w in held:
            w.close()


async def test_a_client_that_stops_reading_is_cut_by_the_send_deadline(pods, gateway) -> None:
    # 400 tokens x 32 KB = ~13 MB of stream: far more than the socket buffers hold.
    pod = await pods(tokens=400, piece_bytes=32 * 1024)
    gw = await gateway([pod.address], send_timeout_s=0.5, write_buffer_bytes=64 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once when nobody reads
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(_req(orjson.dumps({"model": "m", "prompt": "x", "stream": True, "max_tokens": 400})))
    await writer.drain()
    assert await _until(lambda: gw.inflight == 1, 30)
    assert gw.front is not None
    # Never read: the connection is aborted, the request released and the pod's stream cut.
    assert await _until(lambda: gw.front.timed_out["send"] == 1, 30)
    assert await _until(lambda: gw.inflight == 0, 30)
    assert await _until(lambda: pod.disconnects == 1, 30)
    assert gw.router.states["c0"].inflight == 0
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.port}/metrics") as r:
        text = await r.text()
    assert 'kvgate_multicluster_client_timeouts_total{kind="send"} 1.0' in text
    writer.close()


def test_the_clusters_file_sets_the_front_limits_with_the_gateway_config_names() -> None:
    from kvgate.multicluster.clusters import ClustersError, parse

    doc: dict[str, Any] = {"clusters": [{"name": "a", "gateway": "h:1"}]}
    assert parse(doc).limits == FrontLimits()
    doc["limits"] = {"maxBodyBytes": 1024, "sendTimeoutSeconds": 2.5, "maxConnections": 50}
    limits = parse(doc).limits
    assert (limits.max_body_bytes, limits.send_timeout_s, limits.max_connections) == (1024, 2.5, 50)
    bad_limits = (
        ({"maxBodySize": 1}, "limits.maxBodySize"),
        ({"maxBodyBytes": -1}, "limits.maxBodyBytes"),
        ({"maxConnections": 1.5}, "limits.maxConnections"),
    )
    for bad, key in bad_limits:
        doc["limits"] = bad
        with pytest.raises(ClustersError) as e:
            parse(doc)
        assert e.value.key == key
