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


async def test_kvgate_serve_pins_a_cookie_keeping_client(backends: Callable[..., Any]) -> None:
    bs = await backends(3)
    pool = {
        "name": "p",
        "endpoints": [b.address for b in bs],
        "models": ["m"],
        "endpointPickerConfig": SAMPLE,
    }
    cfg = parse_gateway_config({"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
        url = base_url(gw) + "/v1/completions"
        async with http.post(url, json={"model": "m", "prompt": "first", "max_tokens": 2}) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()
            [line] = resp.headers.getall("Set-Cookie", [])
        assert line.endswith("; Path=/; HttpOnly; SameSite=Lax"), line
        tokens = {endpoint_token(Endpoint(address=b.address)): b.address for b in bs}
        home = tokens[base64.b64decode(cookie_value(line)).decode()]  # (a digest: no address to clients)
        seen: Counter[str] = Counter()
        for i in range(12):  # unrelated prompts: only the cookie can pin them
            before = {b.address: len(b.received) for b in bs}
            body = {"model": "m", "prompt": f"unrelated {i} " * (i + 1), "max_tokens": 2}
            headers = {"Cookie": f"llm-d-session={cookie_value(line)}"}
            async with http.post(url, json=body, headers=headers) as resp:
                assert resp.status == 200
                await resp.read()
                assert resp.headers.getall("Set-Cookie", []) == []  # (it already names the endpoint)
            seen.update(b.address for b in bs if len(b.received) > before[b.address])
        assert seen == {home: 12}, seen


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
