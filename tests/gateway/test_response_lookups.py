"""``kvgate serve``: ``GET /v1/responses/{id}`` (a retrieval, ``?stream=true`` an event stream) and ``POST
/v1/responses/{id}/cancel`` go to the endpoint that made the response (vLLM keeps it in that server's
memory: anywhere else they are a 404); an unknown id goes to an endpoint, which answers its own 404.
Before, the gateway answered them ``404 no route``. Real HTTP on loopback, two vLLM-like stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore, make_responses


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as started:
        yield started


async def test_a_lookup_goes_to_the_endpoint_that_made_the_response(stores: list[ResponsesStore]) -> None:
    a, b = stores
    async with running_gateway(make_config([a.address, b.address])) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        ids = await make_responses(s, url, 4)
        assert a.made and b.made  # (both made some: the test can tell a wrong endpoint)
        for rid in ids:
            async with s.get(f"{url}/v1/responses/{rid}") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["id"] == rid
            async with s.get(
                f"{url}/v1/responses/{rid}", params={"stream": "true", "starting_after": "0"}
            ) as r:
                assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
                raw = await r.read()
                assert orjson.loads(raw.split(b"data: ", 1)[1].split(b"\n")[0])["response"]["id"] == rid
            async with s.post(f"{url}/v1/responses/{rid}/cancel") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["status"] == "cancelled"
        for st in stores:  # each lookup answered where its response was made, the query passed on
            assert {p.split("/")[3].split("?")[0] for _, p in st.lookups} == set(st.made)
            assert sum(1 for m, p in st.lookups if m == "GET" and "stream=true&starting_after=0" in p) == len(
                st.made
            )
            assert sum(1 for m, p in st.lookups if m == "POST" and p.endswith("/cancel")) == len(st.made)


async def test_an_unknown_id_gets_the_servers_own_404(stores: list[ResponsesStore]) -> None:
    a, b = stores
    async with running_gateway(make_config([a.address, b.address])) as gw, aiohttp.ClientSession() as s:
        async with s.get(base_url(gw) + "/v1/responses/resp_nope") as r:
            assert r.status == 404
            assert (await r.json())["error"]["message"] == "Response with id 'resp_nope' not found."
        # (each asked where it is kept, prev26's ``gateway.locate``; then the answer of one relayed)
        assert len(a.lookups) + len(b.lookups) == 3


async def test_methods_and_paths_vllm_does_not_serve(stores: list[ResponsesStore]) -> None:
    a, b = stores
    async with running_gateway(make_config([a.address, b.address])) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        async with s.delete(url + "/v1/responses/resp_x") as r:
            assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"  # (HEAD too since gw22)
            assert "error" in await r.json()
        async with s.get(url + "/v1/responses/resp_x/cancel") as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
        for path in ("/v1/responses/", "/v1/responses/a/b"):
            async with s.get(url + path) as r:
                assert r.status == 404
        assert a.lookups == b.lookups == []


async def test_a_lookup_needs_a_key_when_keys_are_on(stores: list[ResponsesStore], tmp_path: Path) -> None:
    a, b = stores
    (tmp_path / "keys").write_text("sk-good t1\n")
    cfg = make_config([a.address, b.address], extra={"auth": {"apiKeysFile": str(tmp_path / "keys")}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        async with s.post(
            url + "/v1/responses",
            data=orjson.dumps({"model": "m", "input": "q"}),
            headers={"authorization": "Bearer sk-good"},
        ) as r:
            rid = (await r.json())["id"]
        async with s.get(f"{url}/v1/responses/{rid}") as r:
            assert r.status == 401
        async with s.get(f"{url}/v1/responses/{rid}", headers={"authorization": "Bearer sk-good"}) as r:
            assert r.status == 200 and (await r.json())["id"] == rid
        sent = (a.lookup_headers + b.lookup_headers)[-1]
        assert "authorization" not in sent  # (the gateway's key is not the model server's)


async def test_a_lookup_passes_the_clients_headers_but_hop_by_hop_and_encoding(
    stores: list[ResponsesStore],
) -> None:
    a, b = stores
    async with running_gateway(make_config([a.address, b.address])) as gw, aiohttp.ClientSession() as s:
        (rid,) = await make_responses(s, base_url(gw), 1)
        hdrs = {
            "accept-encoding": "gzip",
            "x-trace": "t1",
            "x-request-id": "lk-1",
            "x-gateway-model-name": "z",
        }
        async with s.get(f"{base_url(gw)}/v1/responses/{rid}", headers=hdrs) as r:
            assert r.status == 200 and r.headers["x-request-id"] == "lk-1"
            assert "content-encoding" not in r.headers and (await r.json())["id"] == rid
        sent = (a.lookup_headers + b.lookup_headers)[-1]
        assert sent["x-trace"] == "t1" and sent["x-request-id"] == "lk-1"
        assert "accept-encoding" not in sent and "x-gateway-model-name" not in sent


@pytest.mark.parametrize("keyed", [True, False])
async def test_a_lookup_takes_a_request_of_the_tenants_rate_limit(
    stores: list[ResponsesStore], tmp_path: Path, keyed: bool
) -> None:
    """Review s19-fc L2: a tenant at its requestsPerMinute could still send lookups (each a GET, or an
    event-stream replay, at the servers) unbounded; a lookup now takes one request, as any request."""
    a, b = stores
    (tmp_path / "keys").write_text("sk-good t1\n")
    extra: dict[str, object] = {"rateLimits": {"requestsPerMinute": 2}}
    headers = {"x-gateway-inference-fairness-id": "t1"}
    if keyed:
        extra["auth"] = {"apiKeysFile": str(tmp_path / "keys")}
        headers = {"authorization": "Bearer sk-good"}
    async with (
        running_gateway(make_config([a.address, b.address], extra=extra)) as gw,
        aiohttp.ClientSession() as s,
    ):
        url = base_url(gw)
        async with s.post(
            url + "/v1/responses", data=orjson.dumps({"model": "m", "input": "q"}), headers=headers
        ) as r:
            assert r.status == 200, await r.text()
            rid = (await r.json())["id"]
        async with s.get(f"{url}/v1/responses/{rid}", headers=headers) as r:
            assert r.status == 200 and (await r.json())["id"] == rid  # the tenant's second request
        async with s.get(f"{url}/v1/responses/{rid}", headers=headers) as r:
            assert r.status == 429, await r.text()
            assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
            assert r.headers["x-envoy-ratelimited"] == "true" and int(r.headers["Retry-After"]) >= 1
        async with s.post(f"{url}/v1/responses/{rid}/cancel", headers=headers) as r:
            assert r.status == 429
        async with s.get(f"{url}/v1/responses/{rid}", headers={"x-gateway-inference-fairness-id": "t2"}) as r:
            assert r.status == (401 if keyed else 200)  # (another tenant's bucket is its own)
        assert len(a.lookups) + len(b.lookups) == 1 + (0 if keyed else 1)


async def test_a_lookup_shows_the_model_the_client_named() -> None:
    """A response made through a model rewrite (``alias`` -> ``m2``) reads ``alias`` from its create, so its
    retrieval (JSON and ``?stream=true``) and cancel do too, not the rewrite target (review s19-qa2 L2:
    before, ``m2``). A response made with no rewrite keeps the server's name."""
    rewrite = {
        "matches": [{"model": {"type": "Exact", "value": "alias"}}],
        "targets": [{"modelRewrite": "m2"}],
    }
    async with serving(ResponsesStore("s")) as (st,):
        cfg = make_config([st.address], models=("m", "m2"), extra={"rewrites": [rewrite]})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw)
            made = {}
            for model in ("alias", "m"):
                async with s.post(url + "/v1/responses", json={"model": model, "input": "hi"}) as r:
                    doc = await r.json()
                    assert r.status == 200 and doc["model"] == model, doc  # (the create's put-back)
                    made[model] = doc["id"]
            for model, rid in made.items():
                async with s.get(f"{url}/v1/responses/{rid}") as r:
                    assert r.status == 200 and (await r.json())["model"] == model
                async with s.get(f"{url}/v1/responses/{rid}", params={"stream": "true"}) as r:
                    raw = await r.read()
                    event = orjson.loads(raw.split(b"data: ", 1)[1].split(b"\n")[0])
                    assert r.status == 200 and event["response"]["model"] == model, raw
                async with s.post(f"{url}/v1/responses/{rid}/cancel") as r:
                    assert r.status == 200 and (await r.json())["model"] == model
        assert st.docs[made["alias"]]["model"] == "m2"  # (the server holds the rewrite target's name)
