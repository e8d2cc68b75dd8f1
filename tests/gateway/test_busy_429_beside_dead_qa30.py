"""Review s30-qa30 Q7: docs/gateway.md "Retries": a server's 429 "reaches the client with its Retry-After"
when no untried endpoint that can take traffic is left. The proxy's "anywhere left to retry?" test read
the ejection flag only, so a server that is down (scrapes failing, not ejected yet) counted as somewhere
to go: the busy server's 429 was retried there (the retry pick's fail-open over the untried sent it to the
dead one) and the client got ``503 all attempts failed; last: <dead>: connection closed``, without the
busy server's ``Retry-After``. Now both read ``datalayer.health.serving`` over the whole pool.

Fails on main fbb1a6a0: 503 without Retry-After."""

from __future__ import annotations

import aiohttp

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.switchable import Switchable

BODY = b'{"model":"m","prompt":"x","max_tokens":2}'


async def test_a_busy_servers_429_reaches_the_client_when_the_only_other_one_is_down():
    busy, dead = Switchable("busy"), Switchable("dead")
    await busy.start()
    await dead.start()
    cfg = make_config([busy.address, dead.address], extra={"scrapeIntervalSeconds": 0.05})
    try:
        async with running_gateway(cfg, scrape=True) as gw:
            eps = {ep.address: ep for ep in gw.pools[0].endpoints()}
            await until(lambda: all(ep.metrics.updated_at is not None for ep in eps.values()), 60.0)
            dead.down = True  # out of the candidates once its scrapes fail
            await until(lambda: eps[dead.address].scrape_failures >= 3, 60.0)
            busy.mode = "error429"  # at capacity: it ran nothing
            busy.error_headers = {"Retry-After": "7"}
            async with aiohttp.ClientSession() as s:
                for _ in range(4):  # (before: 503 until the dead one had been charged 3 times)
                    async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                        status, wait, text = r.status, r.headers.get("Retry-After"), await r.text()
                    assert (status, wait) == (429, "7"), (status, wait, text)
            assert eps[dead.address].healthy  # (never sent anything: nothing charged it)
    finally:
        await busy.stop()
        await dead.stop()
