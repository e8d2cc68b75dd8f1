"""Issue #12, expected by users: API keys (file or env, stored hashed, tenant -> fairness id),
per-tenant request and token rate limits (429 + Retry-After), and hideInternalAddresses."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.backend import free_port
from gateway.conftest import base_url, make_config, running_gateway
from kvgate.gateway.tenants import ApiKeyError, ApiKeys, RateLimiter, load_keys

BODY = b'{"model":"m","prompt":"x","max_tokens":1}'


def test_keys_from_file_and_env_are_kept_only_as_digests(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# key tenant\nsk-alpha team-a\n\nsk-beta team-b  # comment\n")
    digests = load_keys(str(f), "KEYS", {"KEYS": "sk-gamma=team-c"})
    assert set(digests.values()) == {"team-a", "team-b", "team-c"}
    assert all(len(d) == 32 and b"sk-" not in d for d in digests)  # SHA-256, never the key itself
    keys = ApiKeys(digests)
    assert keys.tenant({"authorization": "Bearer sk-beta"}) == "team-b"
    assert keys.tenant({"x-api-key": "sk-gamma"}) == "team-c"
    assert keys.tenant({"authorization": "Bearer nope"}) is None and keys.tenant({}) is None
    with pytest.raises(ApiKeyError):
        load_keys(None, "UNSET", {})
    f.write_text("just-a-key-without-tenant\n")
    with pytest.raises(ApiKeyError):
        load_keys(str(f), None)


def test_rate_limiter_refills_over_injected_time():
    now = [0.0]
    rl = RateLimiter(requests_per_minute=2, tokens_per_minute=100, clock=lambda: now[0])
    assert rl.admit("a") is None and rl.admit("a") is None
    wait = rl.admit("a")
    assert wait is not None and 0 < wait <= 30
    assert rl.admit("b") is None  # tenants are separate
    now[0] += 30
    assert rl.admit("a") is None  # one request refilled in 30 s
    rl.charge("b", 500)  # a big answer puts b in token debt
    now[0] += 60
    assert rl.admit("b") is not None  # 100 tokens/min: still in debt after a minute
    now[0] += 300
    assert rl.admit("b") is None


def _picked_flows(director: Any) -> list[str]:
    """The flow (fairness id) of each request ``director`` picks for, in order (its ``pick`` wrapped)."""
    seen: list[str] = []
    inner = director.pick

    def pick(req, explain=False):
        seen.append(req.fairness_id)
        return inner(req, explain)

    director.pick = pick
    return seen


async def test_api_keys_tenants_rate_limits_through_the_gateway(backends, tmp_path, monkeypatch):
    (b,) = await backends(1)
    (tmp_path / "keys").write_text("sk-a tenant-a\nsk-b tenant-b\n")
    extra = {"auth": {"apiKeysFile": str(tmp_path / "keys")}, "rateLimits": {"requestsPerMinute": 3}}
    async with running_gateway(make_config([b.address], extra=extra)) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/completions"
        seen = _picked_flows(gw.pools[0].director)
        async with s.post(url, data=BODY) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
        async with s.post(url, data=BODY, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        statuses = []
        for _ in range(4):
            headers = {"Authorization": "Bearer sk-a", "x-gateway-inference-fairness-id": "tenant-b"}
            async with s.post(url, data=BODY, headers=headers) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
                    # Marked as a policy refusal (a proxy in front, --clusters included, must not take it
                    # for the pool at capacity: review s18-qa M4).
                    assert r.headers.get("x-envoy-ratelimited") == "true"
        assert statuses == [200, 200, 200, 429]
        async with s.post(url, data=BODY, headers={"Authorization": "Bearer sk-b"}) as r:
            assert r.status == 200  # another tenant's bucket
        # The key's tenant is the fairness id (a spoofed header is ignored); the key is not forwarded.
        assert seen == ["tenant-a"] * 3 + ["tenant-b"]
        _, fwd, _ = b.received[0]
        assert "authorization" not in fwd


async def test_rate_limits_take_llm_d_fairness_header_as_the_tenant(backends):
    """Without ``auth`` the tenant is the flow as flow control names it: llm-d's fairness header counts as
    GIE's (review s18-qa L4: every llm-d-header client shared the ``default-flow`` bucket)."""
    (b,) = await backends(1)
    extra = {"rateLimits": {"requestsPerMinute": 2}}
    async with running_gateway(make_config([b.address], extra=extra)) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/completions"
        statuses = []
        for who in ("x", "x", "x", "y"):
            async with s.post(url, data=BODY, headers={"x-llm-d-inference-fairness-id": who}) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 429, 200]
        async with s.post(url, data=BODY, headers={"x-gateway-inference-fairness-id": "y"}) as r:
            assert r.status == 200  # the same tenant under GIE's name: y's second request
        async with s.post(url, data=BODY, headers={"x-llm-d-inference-fairness-id": "y"}) as r:
            assert r.status == 429


async def test_a_llm_d_tenants_tokens_are_charged_to_that_tenant(backends):
    """The tenant a request is admitted under is the one its tokens are charged to (review s18-gw M2: the
    llm-d header's tenant was checked but its tokens went to ``default-flow``, so it was never limited and
    every client without a header paid for it)."""
    (b,) = await backends(1)  # (each answer's usage: 7 + 1 tokens)
    extra = {"rateLimits": {"tokensPerMinute": 10}}
    async with running_gateway(make_config([b.address], extra=extra)) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/completions"
        body = b'{"model":"m","prompt":"x","max_tokens":1}'
        statuses = []
        for _ in range(3):  # 8 tokens each against 10 a minute: in debt after two
            async with s.post(url, data=body, headers={"x-llm-d-inference-fairness-id": "tenant-x"}) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 429]
        async with s.post(url, data=body) as r:
            assert r.status == 200  # a client without a header spent nothing


@pytest.mark.parametrize("mode", ["hang", "cut"])
async def test_tokens_a_tenant_abandons_are_charged_its_prompt(backends, mode):
    """A request whose usage never comes (the client left before the answer, or the stream was cut) costs
    its tenant the prompt's estimate (review s18-qa L6: it cost nothing, so a tenant that always left before
    the usage was never limited by tokensPerMinute)."""
    (b,) = await backends(1, tokens=8)
    b.mode = mode
    extra = {"rateLimits": {"tokensPerMinute": 300}}
    prompt = "word " * 400  # ~500 tokens by the text estimate (2,000 characters / 4)
    async with running_gateway(make_config([b.address], extra=extra)) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/completions"
        body = orjson.dumps({"model": "m", "prompt": prompt, "stream": mode == "cut"})
        headers = {"x-gateway-inference-fairness-id": "leaver"}
        if mode == "hang":
            sent = asyncio.create_task(s.post(url, data=body, headers=headers))
            await asyncio.wait_for(b.arrived.wait(), 30)
            sent.cancel()  # the client leaves before any answer
            with contextlib.suppress(asyncio.CancelledError):
                await sent
        else:
            async with s.post(url, data=body, headers=headers) as r:
                await r.read()  # the stream is cut before its usage
        b.mode = "ok"
        for _ in range(500):  # (the gateway sees the client leave a moment later)
            if gw.proxy.inflight == 0:
                break
            await asyncio.sleep(0.01)
        async with s.post(url, data=b'{"model":"m","prompt":"x"}', headers=headers) as r:
            assert r.status == 429, "the abandoned prompt was not charged"
        other = {"x-gateway-inference-fairness-id": "stayer"}
        async with s.post(url, data=b'{"model":"m","prompt":"x"}', headers=other) as r:
            assert r.status == 200


async def test_a_request_cut_at_the_deadline_is_charged_its_prompt(backends):
    """The server took the request and worked on it to the gateway's deadline (504): its prompt's estimate
    is charged as when the client leaves (review s18-fixes-a L3: a tenant whose requests always outran
    requestTimeoutSeconds was never held by tokensPerMinute)."""
    (b,) = await backends(1, tokens=8)
    b.mode = "hang"
    extra = {"rateLimits": {"tokensPerMinute": 300}, "limits": {"requestTimeoutSeconds": 0.5}}
    headers = {"x-gateway-inference-fairness-id": "outrunner"}
    async with running_gateway(make_config([b.address], extra=extra)) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/completions"
        body = orjson.dumps({"model": "m", "prompt": "word " * 400})  # ~500 tokens by the text estimate
        async with s.post(url, data=body, headers=headers) as r:
            assert r.status == 504
        b.mode = "ok"
        async with s.post(url, data=b'{"model":"m","prompt":"x"}', headers=headers) as r:
            assert r.status == 429


async def test_a_fairness_header_named_hop_by_hop_is_not_the_tenant(backends):
    """A fairness header the client names in ``Connection`` is hop-by-hop: not the request's flow, so not
    its tenant either: admitted and charged under the same tenant as its flow (``default-flow``), whether or
    not rate limits are on. Before, each such request was admitted under the header's tenant and its tokens
    went to ``default-flow`` (review s18-fixes-a L1: a fresh name per request was never refused), and
    a7dd85f's fix made the flow depend on whether rate limits were configured (review s18-fixes-b L2)."""
    (b,) = await backends(1)  # (each answer's usage: 7 + 1 tokens)
    extra = {"rateLimits": {"tokensPerMinute": 10}}
    async with running_gateway(make_config([b.address], extra=extra)) as gw, aiohttp.ClientSession() as s:
        seen = _picked_flows(gw.pools[0].director)
        url = base_url(gw) + "/v1/completions"
        body = b'{"model":"m","prompt":"x","max_tokens":1}'
        name = "x-gateway-inference-fairness-id"
        statuses = []
        for i in range(3):
            async with s.post(url, data=body, headers={name: f"fresh-{i}", "Connection": name}) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 429]  # one bucket, in debt after two
        async with s.post(url, data=body) as r:
            assert r.status == 429  # the same tenant: default-flow
        async with s.post(url, data=body, headers={name: "other"}) as r:
            assert r.status == 200
        assert seen == ["default-flow", "default-flow", "other"]


async def test_an_answer_lost_mid_body_is_charged_its_prompt(tmp_path):
    """An endpoint answered a head, generated, then its body was lost and no retry answered (503): the
    request's prompt is charged, as when the client leaves (review s18-fixes-c L3: nothing was)."""
    served = 0

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal served
        head = await r.readuntil(b"\r\n\r\n")
        n = next(
            int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")
        )
        await r.readexactly(n)
        served += 1
        if served == 1:  # a head, part of the body, then the connection is gone
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        else:
            answer = b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(answer)
            )
            w.write(answer)
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    extra = {"rateLimits": {"tokensPerMinute": 300}}
    headers = {"x-gateway-inference-fairness-id": "lost"}
    try:
        async with running_gateway(make_config([address], extra=extra)) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/completions"
            body = orjson.dumps({"model": "m", "prompt": "word " * 400})  # ~500 tokens by the text estimate
            async with s.post(url, data=body, headers=headers) as r:
                assert r.status == 503
            async with s.post(url, data=b'{"model":"m","prompt":"x"}', headers=headers) as r:
                assert r.status == 429
    finally:
        server.close()


async def test_hide_internal_addresses_keeps_them_out_of_errors_and_explain(backends):
    (b,) = await backends(1)
    dead = f"127.0.0.1:{free_port()}"
    cfg = make_config([dead], extra={"hideInternalAddresses": True, "limits": {"maxAttempts": 1}})
    async with (
        running_gateway(cfg) as gw,
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=BODY) as r,
    ):
        body = await r.read()
        assert r.status == 503 and dead.encode() not in body and b"127.0.0.1" not in body
    cfg = make_config([b.address], extra={"hideInternalAddresses": True})
    async with (
        running_gateway(cfg) as gw,
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=BODY, headers={"x-kvgate-explain": "1"}) as r,
    ):
        assert r.status == 200 and "x-kvgate-pick" not in r.headers
    cfg = make_config([dead], extra={"limits": {"maxAttempts": 1}})
    async with (
        running_gateway(cfg) as gw,
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=BODY) as r,
    ):
        assert dead in orjson.loads(await r.read())["error"]["message"]  # shown by default
