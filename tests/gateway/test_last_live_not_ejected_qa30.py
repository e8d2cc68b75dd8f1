"""Review s30-qa30 Q3: "never the last healthy one" (``HealthTracker.failure``) counted an endpoint as a
healthy peer by its ejection flag alone. A pool of two where one server is down (its scrapes fail, so
the picker never sends it anything and nothing charges or ejects it) and the other, the only one
serving, times out a few requests (a stall, an overload burst): the live one was ejected, beside the
dead one, and every request then went by the picker's fail-open to the dead server: 503 for everyone
until the live one's probe. Now a peer counts only while it is up by the scrapes too
(``datalayer.health.up``).

Fails on main fbb1a6a0: after three 504s from the live endpoint, the next requests (it answers again)
are 503 ``all attempts failed; last: <the dead one>``."""

from __future__ import annotations

import aiohttp

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.switchable import Switchable

STREAM = b'{"model":"m","prompt":"hello there","max_tokens":2,"stream":true}'
BODY = b'{"model":"m","prompt":"hello there","max_tokens":2}'


async def test_the_only_live_endpoint_is_not_ejected_beside_a_dead_one():
    live, dead = Switchable("live"), Switchable("dead")
    await live.start()
    await dead.start()
    cfg = make_config(
        [live.address, dead.address],
        extra={
            "scrapeIntervalSeconds": 0.05,
            "limits": {"idleTimeoutSeconds": 0.5},
            # the probe far beyond the test (a timer is never waited for)
            "health": {"ejectBaseSeconds": 300, "ejectMaxSeconds": 300},
        },
    )
    try:
        async with running_gateway(cfg, scrape=True) as gw:
            eps = {ep.address: ep for ep in gw.pools[0].endpoints()}
            await until(lambda: all(ep.metrics.updated_at is not None for ep in eps.values()), 60.0)
            dead.down = True  # its scrapes fail: out of the candidates, never sent anything
            await until(lambda: eps[dead.address].scrape_failures >= 3, 60.0)
            url = base_url(gw) + "/v1/completions"
            async with aiohttp.ClientSession() as s:
                live.mode = "head_hang"  # the live one stalls a moment: its streams' heads time out
                for _ in range(3):  # ejectAfterFailures (3)
                    async with s.post(url, data=STREAM) as r:
                        assert r.status == 504, await r.text()
                live.mode = "ok"  # and answers again
                statuses = []
                for _ in range(5):
                    async with s.post(url, data=BODY) as r:
                        statuses.append((r.status, (await r.text())[:200]))
            assert all(st == 200 for st, _ in statuses), statuses
            assert eps[live.address].healthy, "the only live endpoint was ejected beside a dead one"
    finally:
        await live.stop()
        await dead.stop()
