"""At the SIGTERM drain's deadline, a request still queued by flow control never ran anywhere: it leaves the
queue (``EvictedOther``, the reference's outcome of a queue evicted at shutdown) and is answered 503 with
``Retry-After`` and ``Connection: close`` (safe to retry), never sent to a model server in the stop's extra
second for cut streams. Before (review s20-qa M1), the queue kept dispatching in that second as slots freed,
then ``close_all`` cut those connections: the model server got work thrown away, the client an empty reply.
Real HTTP on loopback: one process in-process, ``--workers 2`` as a real ``kvgate serve``."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import orjson
from prometheus_client import REGISTRY

from gateway.backend import Backend
from gateway.conftest import base_url, labelled_counts, until
from gateway.test_queue_time_not_charged import _config
from gateway.test_workers_max_requests import queued as workers_queued
from kvgate.flowcontrol.controller import EVICTED_OTHER
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer

OUTCOMES = "kvgate_flow_control_requests_total"


async def _post(s: aiohttp.ClientSession, url: str, prompt: str) -> tuple[int | None, dict[str, str], bytes]:
    """(status, headers, body); (None, {}, b"") when the connection ended with no answer."""
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 2})
    try:
        async with s.post(url + "/v1/completions", data=body) as r:
            return r.status, dict(r.headers), await r.read()
    except aiohttp.ClientError:
        return None, {}, b""


def _queued_at_deadline(status: int | None, headers: dict[str, str], body: bytes) -> None:
    assert status == 503, f"the queued request got {status or 'no answer (connection closed)'}"
    assert headers.get("Retry-After") == "1", headers
    assert headers.get("Connection", "").lower() == "close", headers
    err = orjson.loads(body)["error"]
    assert err["code"] == "service_unavailable" and "not sent to any model server" in err["message"], err


async def test_a_request_queued_at_the_drain_deadline_is_answered_503_and_never_sent(backends) -> None:
    (b,) = await backends(1)
    b.answer_delay = 1.5  # the holder ends within the stop's extra second after the deadline (0.5 s)
    cfg = _config(b.address, 0)
    gw = GatewayServer(cfg, [build_pool(p) for p in cfg.pools], scrape=False)
    await gw.start()
    stopped = False
    try:
        registry: Any = REGISTRY  # (flow control's metrics: the default registry, process-wide: a delta)
        before = labelled_counts(registry, OUTCOMES, "outcome")
        url = base_url(gw)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            holder = asyncio.create_task(_post(s, url, "a"))
            await asyncio.wait_for(b.arrived.wait(), 30)
            queued = asyncio.create_task(_post(s, url, "b"))
            await until(lambda: gw.pools[0].director.queued() == 1, what="the second request queued")
            await gw.stop(drain_timeout=0.5)
            stopped = True
            (h_status, _, _), got = await asyncio.wait_for(asyncio.gather(holder, queued), 10)
        after = labelled_counts(registry, OUTCOMES, "outcome")
    finally:
        if not stopped:
            await gw.stop(drain_timeout=0)
    sent = len(b.received)
    assert sent == 1, f"the queued request reached the model server after the deadline ({sent} sent)"
    _queued_at_deadline(*got)
    assert h_status == 200  # (the request in flight finished within the stop's second for cut streams)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert delta.get(EVICTED_OTHER) == 1.0, delta


async def test_every_workers_queue_is_answered_503_at_the_drain_deadline(tmp_path) -> None:
    """``--workers 2``: the fleet gated at one request in flight (held past the deadline), three more
    queued over the workers, SIGTERM: at the deadline each worker answers its queued ones 503, none is
    sent after the signal (those in flight are cut, as any request in flight at the deadline)."""
    from gateway import drain_kit

    b = await Backend("b0").start()
    b.answer_delay = 30.0
    stderr = tmp_path / "stderr"
    cfg = drain_kit.flow_controlled_config(
        tmp_path, b.address, "defaultRequestTTL: 30s", "limits: {drainTimeoutSeconds: 1}\n"
    )
    proc, port, admin = await drain_kit.serve_workers(cfg, stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        # (a new connection each: the kernel spreads them over the workers)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            holder = asyncio.create_task(_post(s, url, "a"))
            await asyncio.wait_for(b.arrived.wait(), 30)  # (through a worker process: 10 s before)
            queued = [asyncio.create_task(_post(s, url, p)) for p in "bcd"]
            # Each of the three queued at its worker (or let through, one per worker at times) before the
            # signal (a fixed 1 s before: a loaded worker could take one after its listener closed).
            loop = asyncio.get_running_loop()
            end = loop.time() + 30.0
            while sum((per := await workers_queued(s, admin)).values()) + len(b.received) - 1 < 3:
                assert loop.time() < end, f"not all queued: {per}, {len(b.received)} sent"
                await asyncio.sleep(0.05)
            at_sigterm = len(b.received)
            proc.send_signal(signal.SIGTERM)
            got = await asyncio.wait_for(asyncio.gather(*queued), 30)
            await asyncio.wait_for(holder, 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await b.stop()
    sent = len(b.received)
    assert sent == at_sigterm, (
        f"a queued request reached the model server after SIGTERM ({at_sigterm} -> {sent})"
    )
    # (the fleet's gate let one through per worker at times, a load-dependent share: those were in flight
    # at the deadline, cut as such; every one still queued then is answered 503)
    answered = [one for one in got if one[0] is not None]
    assert len(answered) == len(got) - (at_sigterm - 1) >= 1, ([one[0] for one in got], at_sigterm)
    for one in answered:
        _queued_at_deadline(*one)
    assert "drain deadline: " in stderr.read_text() and "answered 503 (EvictedOther)" in stderr.read_text()
