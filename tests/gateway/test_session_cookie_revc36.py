"""rev-c36 F5: aiohttp's cookie jar (``http.cookies`` quoting) sends a value holding ``=`` (base64 padding)
back DQUOTE-wrapped, ``llm-d-session="..."``, as RFC 6265 4.1.1's cookie-value grammar allows; kvgate read
the quotes as part of the value: no affinity, and a new ``Set-Cookie`` on every answer. A real client jar
here (the qa36a tests build the header by hand), ``kvgate serve`` with llm-d's session-affinity sample."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from gateway.conftest import base_url, running_gateway
from gateway.test_session_cookie_llmd_qa36a import SAMPLE, _post, distinct_prompt
from kvgate.config.gateway import parse_gateway_config
from kvgate.scheduling.plugins.session import session_cookie


def test_a_quoted_cookie_value_is_read() -> None:
    assert session_cookie({"cookie": 'a=1; llm-d-session="YQ=="'}) == "YQ=="
    assert session_cookie({"cookie": "llm-d-session=YQ=="}) == "YQ=="
    assert session_cookie({"cookie": 'llm-d-session="'}) == '"'  # (one quote: not a pair, kept)


async def test_aiohttps_cookie_jar_is_pinned(backends: Callable[..., Any]) -> None:
    bs = await backends(3)
    pool = {
        "name": "p",
        "endpoints": [b.address for b in bs],
        "models": ["m"],
        "endpointPickerConfig": SAMPLE,
    }
    cfg = parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]})
    jar = aiohttp.CookieJar(unsafe=True)  # (unsafe: keeps cookies of an IP-address host)
    async with running_gateway(cfg) as gw, aiohttp.ClientSession(cookie_jar=jar) as http:
        url = base_url(gw) + "/v1/completions"
        seen: Counter[str] = Counter()
        set_cookies = 0
        for i in range(20):
            served, lines = await _post(http, url, bs, distinct_prompt(i))
            seen[served] += 1
            set_cookies += bool(lines)
        sent = jar.filter_cookies(URL(url))["llm-d-session"].coded_value  # (what the jar sends back)
        assert sent.startswith('"'), f"the jar did not quote the value: nothing tested ({sent})"
    assert len(seen) == 1, seen
    assert set_cookies == 1  # (only the first answer: later cookies already name the endpoint)
