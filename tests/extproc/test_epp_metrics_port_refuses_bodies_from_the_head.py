"""rev-fixqa25 R1: since fixqa25 (qa25 F2) ``kvgate epp``'s metrics port runs on httpfront with the front's
*data-port* defaults: ``maxBodyBytes`` 8 MiB per request, ``max_buffered_bytes`` 1 GiB in all, body
deadline 60 s. Every route there is GET/HEAD, but ``get_only``'s 405 is only given once the whole body has
been read and buffered, so any client that can reach the port (all interfaces in the pod, plaintext
unless --metrics-tls, no auth) makes the EPP hold request bodies nobody reads: measured, 60 connections
each sending 8 MiB - 1 of a POST /metrics body and stalling: EPP metrics process RSS 30 -> 511 MiB
(aiohttp before: 40 -> 42 MiB, the 405 answered from the head), up to the 1 GiB budget (the chart's hub
EPP has ``limits: {memory: 1Gi}``, the EPP 2Gi: an OOM kill of the process serving Envoy's ext_proc).
The test: a POST with ``Content-Length: 8 MiB`` and no body yet must be refused from its head (405/413,
anything 4xx) within 5 s, as aiohttp did; on httpfront nothing comes until the body (or the 60 s body
deadline). Fixed: the port's ``head_check`` (``extproc.metrics.refuse_bodies``) refuses any other method
(405) and any body (413) from the head."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvgate.extproc.metrics import EppMetrics

pytestmark = pytest.mark.asyncio


async def test_a_post_with_a_big_body_is_refused_from_its_head() -> None:
    m = EppMetrics()
    listener, port = await m.serve("127.0.0.1", 0, aggregate=lambda: b"{}", readyz=lambda: None)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n")
        await w.drain()
        got = b""
        end = time.monotonic() + 5.0
        while b"\r\n" not in got and time.monotonic() < end:
            try:
                chunk = await asyncio.wait_for(r.read(1024), timeout=max(0.01, end - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
        w.close()
        status = got.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 4"), (
            f"no refusal from the head within 5 s (got {status!r}): the port waits for (and buffers) "
            "an 8 MiB body no route reads"
        )
    finally:
        await listener.cleanup()


async def _status(port: int, head: bytes, body: bytes = b"") -> tuple[bytes, asyncio.StreamWriter]:
    """Send ``head`` and ``body`` (the rest never comes) and read the status line, 5 s at most."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(head + body)
    await w.drain()
    got = b""
    end = time.monotonic() + 5.0
    while b"\r\n" not in got and time.monotonic() < end:
        try:
            chunk = await asyncio.wait_for(r.read(1024), timeout=max(0.01, end - time.monotonic()))
        except TimeoutError:
            break
        if not chunk:
            break
        got += chunk
    return got.split(b"\r\n", 1)[0], w


async def test_stalled_bodies_hold_nothing_and_reads_still_answer() -> None:
    """Twelve POSTs, each announcing 8 MiB and sending 1 MiB of it, then stalling (the review's flood,
    scaled down): each is refused from its head (405) and no byte of any body is held in the front's
    budget (before: each body's bytes were taken from it as they came, 1 GiB in all, and nothing was
    answered until the whole body had come). A GET or HEAD with a body is refused too (413: no route
    here reads one); a plain GET is still served."""
    m = EppMetrics()
    listener, port = await m.serve("127.0.0.1", 0, aggregate=lambda: b"{}", readyz=lambda: None)
    writers: list[asyncio.StreamWriter] = []
    try:
        head = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n"
        got = await asyncio.gather(*(_status(port, head, b"x" * (1 << 20)) for _ in range(12)))
        writers += [w for _, w in got]
        assert [s for s, _ in got] == [b"HTTP/1.1 405 Method Not Allowed"] * 12, [s for s, _ in got]
        assert listener.front.budget.used == 0
        for head in (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            b"HEAD /readyz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        ):
            status, w = await _status(port, head)
            writers.append(w)
            assert status.startswith(b"HTTP/1.1 413"), (head, status)
        status, w = await _status(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        writers.append(w)
        assert status == b"HTTP/1.1 200 OK"
    finally:
        for w in writers:
            w.close()
        await listener.cleanup()
