"""s17-qafix-bc B1: the body budget (1d8357d, limits.maxBufferedBytes) takes a body's *declared*
Content-Length at its head, before one byte of it arrived. So ~128 header-only connections (each
``Content-Length: 8388608``, ~90 bytes sent, no body) reserve the whole default 1 GiB budget: every other
client's POST gets ``503 service_unavailable`` until bodyTimeoutSeconds (60 s) ends them, and the attacker
reconnects. No auth needed (and with auth, any key holder). Before the fix those connections held nothing
and blocked nobody; the EPP's budget (extproc/session.py) takes bytes as they arrive, not as announced.

Now the budget takes bytes as they arrive (httpfront/server.py ``_count``); a head only checks that its
Content-Length fits in what is free, reserving nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from gateway.conftest import backends, base_url, make_config, running_gateway, until  # noqa: F401 (fixture)
from gateway.test_front import BODY


async def test_header_only_connections_do_not_lock_every_post_out(backends):  # noqa: F811
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:  # default limits: 8 MiB body, 1 GiB budget
        front = gw._servers[0][1]
        head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % front.max_body
        writers = []
        sent = 0
        try:
            for _ in range(front.max_buffered // front.max_body):
                _r, w = await asyncio.open_connection("127.0.0.1", gw.port)
                w.write(head)  # the head only: not one byte of the announced body
                sent += len(head)
                writers.append(w)
            await asyncio.sleep(0.3)
            used = front.budget.used
            async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                status, text = r.status, await r.text()
        finally:
            for w in writers:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
        assert status == 200, (
            f"{len(writers)} connections that sent {sent} bytes of heads (no body byte) reserve "
            f"{used} of the {front.budget.limit}-byte body budget: a {len(BODY)}-byte POST "
            f"gets {status} {text[:160]}"
        )


async def test_a_request_without_a_body_passes_a_spent_budget(backends):  # noqa: F811
    """The head's check is for a body: with the budget spent (here over a limit a reload lowered
    below what is held), a GET without one is still answered."""
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw:
        front = gw._servers[0][1]
        front.budget.used = front.budget.limit + 1
        try:
            async with aiohttp.ClientSession() as s, s.get(base_url(gw) + "/v1/models") as r:
                assert r.status == 200, await r.text()
        finally:
            front.budget.used = 0


async def test_a_body_that_stops_fitting_while_it_arrives_gets_503(backends):  # noqa: F811
    """Two heads that each fit in what is free are both taken (nothing reserved); the body whose bytes
    then pass the budget gets 503 with Retry-After as they arrive, its bytes given back at once."""
    (b,) = await backends(1)
    limits = {"maxBufferedBytes": 1_000_000, "maxBodyBytes": 1_000_000}
    async with running_gateway(make_config([b.address], extra={"limits": limits})) as gw:
        front = gw._servers[0][1]
        body = b'{"model":"m","prompt":"' + b"x" * 600_000 + b'","max_tokens":1}'
        head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
        ra, wa = await asyncio.open_connection("127.0.0.1", gw.port)
        rb, wb = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            wa.write(head + body[:100])
            wb.write(head + body[:100])
            await until(lambda: front.budget.used == 200, 5, "both heads taken, 100 bytes each")
            wa.write(body[100:-100])  # all of A's body but its last 100 bytes: 600 KB held
            await until(lambda: front.budget.used == len(body), 5, "A's arrived bytes held")
            wb.write(body[100:])  # B's bytes no longer fit
            out = await asyncio.wait_for(rb.read(4096), 5)
            head_b = out.partition(b"\r\n\r\n")[0]
            assert head_b.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head_b, out[:200]
            await until(lambda: front.budget.used == len(body) - 100, 5, "B's bytes given back")
            wa.write(body[-100:])
            out = await asyncio.wait_for(ra.readuntil(b"\r\n\r\n"), 5)
            assert out.startswith(b"HTTP/1.1 200"), out[:80]
            await until(lambda: front.budget.used == 0, 5, "every byte given back")
        finally:
            for w in (wa, wb):
                w.close()
