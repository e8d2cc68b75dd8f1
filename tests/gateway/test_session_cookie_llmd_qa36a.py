"""qa36a F4: llm-d's session-affinity sample (``deploy/config/session-affinity-config.yaml``) pins a client
that keeps cookies, "without requiring any client-side code changes": llm-d's ``session-affinity-scorer``
sets ``llm-d-session`` = base64(the endpoint that served) on each answer and scores the endpoint a
request's cookie names 1.0. kvgate's scorer read only ``x-session-id`` / body ``user``: no cookie was set,
picks spread. Both doors now set and read the cookie: ``kvgate serve`` here (real gateway, three loopback
backends), ``kvgate epp`` in ``tests/extproc/test_session_cookie_llmd_qa36a.py``."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gateway.conftest import base_url, running_gateway
from kvgate.config.gateway import parse_gateway_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.session import SessionAffinityScorer, endpoint_token
from kvgate.scheduling.types import InferenceRequest

# llm-d's sample as it ships (the prefix scorer's old hashBlockSize: one WARNING), decode-filter included
SAMPLE: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "prefix-cache-scorer", "parameters": {"hashBlockSize": 5, "maxPrefixBlocksToMatch": 256}},
        {"type": "session-affinity-scorer"},
        {"type": "decode-filter"},
        {"type": "max-score-picker"},
        {"type": "single-profile-handler"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [
                {"pluginRef": "decode-filter"},
                {"pluginRef": "max-score-picker"},
                {"pluginRef": "session-affinity-scorer", "weight": 100},
                {"pluginRef": "prefix-cache-scorer", "weight": 50},
            ],
        }
    ],
}


def cookie_value(set_cookie: str) -> str:
    name, _, rest = set_cookie.partition("=")
    assert name == "llm-d-session", set_cookie
    return rest.split(";", 1)[0]


def distinct_prompt(i: int) -> str:
    """Prompts sharing no leading block of the sample's 5-char hashBlockSize (rev-c36 F6: prompts that all
    began ``unrelated `` were pinned by the prefix scorer to the first one's endpoint, cookie or not)."""
    return f"{chr(97 + i)}{i} distinct " * (i + 1)


async def _post(
    http: aiohttp.ClientSession, url: str, bs: list[Any], prompt: str, **kw: Any
) -> tuple[str, str]:
    """(the backend that served ``prompt``, the answer's Set-Cookie lines joined)."""
    before = {b.address: len(b.received) for b in bs}
    async with http.post(url, json={"model": "m", "prompt": prompt, "max_tokens": 2}, **kw) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        lines = "\n".join(resp.headers.getall("Set-Cookie", []))
    [served] = [b.address for b in bs if len(b.received) > before[b.address]]
    return served, lines


async def test_kvgate_serve_pins_a_cookie_keeping_client(backends: Callable[..., Any]) -> None:
    bs = await backends(3)
    pool = {
        "name": "p",
        "endpoints": [b.address for b in bs],
        "models": ["m"],
        "endpointPickerConfig": SAMPLE,
    }
    cfg = parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        url = base_url(gw) + "/v1/completions"
        async with http.post(url, json={"model": "m", "prompt": "first", "max_tokens": 2}) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
            [line] = resp.headers.getall("Set-Cookie", [])
        assert line.endswith("; Path=/; HttpOnly; SameSite=Lax"), line
        tokens = {endpoint_token(Endpoint(address=b.address)): b.address for b in bs}
        home = tokens[base64.b64decode(cookie_value(line)).decode()]  # (a digest: no address to clients)
        headers = {"Cookie": f"llm-d-session={cookie_value(line)}"}
        # The premise: without the cookie these prompts spread (all 12 on one of 3 by chance: ~6e-6).
        bare = Counter([(await _post(http, url, bs, distinct_prompt(i)))[0] for i in range(12)])
        assert len(bare) > 1, f"the prompts do not spread without a cookie: {bare}"
        seen: Counter[str] = Counter()
        for i in range(12, 24):  # prompts no endpoint holds: only the cookie can pin them
            served, lines = await _post(http, url, bs, distinct_prompt(i), headers=headers)
            assert lines == ""  # (it already names the endpoint)
            seen[served] += 1
        assert seen == {home: 12}, seen
        # A prompt cached on another endpoint: the cookie (weight 100) beats the prefix (weight 50).
        for i in range(24, 64):
            served, _ = await _post(http, url, bs, distinct_prompt(i))
            if served != home:
                break
        assert served != home, "40 prompts with no cookie all went to the cookie's endpoint"
        assert (await _post(http, url, bs, distinct_prompt(i)))[0] == served  # (the prefix alone: its holder)
        assert (await _post(http, url, bs, distinct_prompt(i), headers=headers))[0] == home


def _scorer(params: dict[str, Any]) -> SessionAffinityScorer:
    import random

    s = SessionAffinityScorer.create(
        "s", Params(params, "p"), PluginHandle(None, lambda: 0.0, 2.0, random.Random(0))
    )
    assert isinstance(s, SessionAffinityScorer)
    return s


def test_the_cookie_reads_a_reference_token_and_writes_max_age() -> None:
    a, b = Endpoint(address="10.0.0.1:8000", name="pod-a-rank-0"), Endpoint(address="10.0.0.2:8000")
    s = _scorer({"maxAge": 3600})
    # a reference EPP's token: base64("<namespace>/<pod>-rank-<i>")
    ref = base64.b64encode(b"default/pod-a-rank-0").decode()
    req = InferenceRequest("r", "m", prompt_text="x", headers={"cookie": f"other=1; llm-d-session={ref}"})
    assert s.score(CycleState(req, 0.0), [a, b]) == [1.0, 0.0]
    token = base64.b64encode(endpoint_token(b).encode()).decode()
    assert "10.0.0.2" not in base64.b64decode(token).decode()
    assert s.cookie_for(req, b) == f"llm-d-session={token}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
    bad = InferenceRequest("r2", "m", prompt_text="x", headers={"cookie": "llm-d-session=%%%"})
    assert s.score(CycleState(bad, 0.0), [a, b]) == [0.0, 0.0]  # (undecodable: no affinity)
    with pytest.raises(ValueError, match="maxAge"):
        _scorer({"maxAge": -1})


def test_the_gateways_cookie_goes_beside_the_servers() -> None:
    from kvgate.gateway.stream import pass_upstream_headers

    reply = {"x-request-id": "r", "set-cookie": "llm-d-session=YQ==; Path=/"}
    lines = pass_upstream_headers({"set-cookie": "a=1\nb=2", "x-up": "1"}, reply)
    assert lines == ("a=1", "b=2", "llm-d-session=YQ==; Path=/") and "set-cookie" not in reply
    assert pass_upstream_headers({}, {"set-cookie": "own=1"}) == ("own=1",)
