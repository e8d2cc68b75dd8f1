"""The drain's deadline cuts a non-streamed answer being relayed as it arrives (past ``whole_max``), as
it cuts a stream (session 17's closing note: it was not registered with the cut, so it outlived the
deadline: relayed on until the gateway closed its connections after the cut streams' write time, with
its model server generating on; counted ``client_gone``).

The upstream is a raw server sending a big JSON answer slowly; the gateway runs in-process on loopback.
The cut streams' write time (``CUT_WRITE_S``) is raised to 30 s here, so an answer the deadline does not
cut holds the stop that long (the test gives it 10 s).
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.conftest import error_codes, running_gateway
from gateway.test_big_json_answer import _cfg, _server, answer_body, post, servers  # noqa: F401
from kvgate.gateway import server as gateway_server


@pytest.mark.parametrize("http10", [False, True])
async def test_the_drain_deadline_cuts_a_relayed_big_answer(servers, monkeypatch, http10):  # noqa: F811
    monkeypatch.setattr(gateway_server, "CUT_WRITE_S", 30.0)
    body = answer_body(2_000_000)
    s = await _server(servers, body, piece=8192, pause=0.05)  # ~12 s to send it all
    async with running_gateway(_cfg(s)) as gw:
        gw.proxy.whole_max = 16_384
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        req = b'{"model":"m","prompt":"x"}'
        version = b"1.0" if http10 else b"1.1"
        w.write(
            b"POST /v1/completions HTTP/%b\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (version, len(req), req)
        )
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        assert b" 200 " in head.split(b"\r\n")[0]
        got = await asyncio.wait_for(r.readexactly(50_000), 10)  # relayed as it comes
        assert got
        await asyncio.wait_for(gw.stop(drain_timeout=0.3), 10)  # before: ~12 s (the whole answer)
        try:
            rest = await asyncio.wait_for(r.read(), 10)
        except ConnectionResetError:
            rest = b""
        w.close()
        assert len(got) + len(rest) < len(body)  # cut, not sent whole
        assert error_codes(gw.metrics.registry) == {"stream_cut": 1.0}
        assert all(ep.healthy for ep in gw.pools[0].endpoints())
        st = gw.health._state.get(s.address)
        assert st is None or st.failures == 0  # the gateway's doing, not the endpoint's
