"""Review s20-qa L2: ``kvgate serve``'s ``GET /v1/models`` left out the names a rewrite rule serves (its own
``/v1/pool/aggregate`` and ``kvgate serve --clusters`` in front of it listed them), and ``GET
/v1/models/{id}`` (the openai SDK's ``models.retrieve``) was ``404 no route``. Now both list the names the
rules in force send to a pool's models (the config's, or the live InferenceModelRewrite rules that replace
them), and ``/v1/models/{id}`` answers that entry, or OpenAI's 404 ``model_not_found``."""

from __future__ import annotations

import asyncio

import orjson

from gateway.conftest import make_config, running_gateway
from kvgate.config.gateway import RewriteRule, RewriteTarget

REWRITES = {
    "rewrites": [
        {"matches": [{"model": {"value": "alias"}}], "targets": [{"modelRewrite": "m", "weight": 1}]},
    ]
}


async def _call(port: int, method: str, path: str, body: bytes = b"") -> tuple[bytes, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    w.write(head.encode() + body)
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def test_v1_models_lists_the_names_a_rewrite_serves_and_answers_each(backends) -> None:
    """Fails before fixqa20c: /v1/models lists ['m'] (the aggregate ['m', 'alias']), /v1/models/alias 404
    no route."""
    bs = await backends(1)
    async with running_gateway(make_config([bs[0].address], extra=REWRITES)) as gw:
        head, _ = await _call(gw.port, "POST", "/v1/completions", b'{"model":"alias","prompt":"x"}')
        assert head.startswith(b"HTTP/1.1 200"), head
        head, body = await _call(gw.port, "GET", "/v1/models")
        listed = {m["id"]: m for m in orjson.loads(body)["data"]}
        assert sorted(listed) == ["alias", "m"], listed
        assert listed["alias"] == {"id": "alias", "object": "model", "created": 0, "owned_by": "kvgate",
                                   "root": "m", "parent": None, "pool": "p"}  # fmt: skip
        assert sorted(gw._pool_models(gw.pools[0])) == sorted(listed)  # the aggregate lists the same
        for name in ("alias", "m"):
            head, body = await _call(gw.port, "GET", f"/v1/models/{name}")
            assert head.startswith(b"HTTP/1.1 200"), (name, head)
            assert orjson.loads(body) == listed[name]
        head, body = await _call(gw.port, "GET", "/v1/models/nope")
        assert head.startswith(b"HTTP/1.1 404"), head
        err = orjson.loads(body)["error"]
        assert (err["code"], err["param"]) == ("model_not_found", "model") and "'nope'" in err["message"], err
        head, _ = await _call(gw.port, "POST", "/v1/models/m")
        assert head.startswith(b"HTTP/1.1 405"), head


async def test_live_inference_model_rewrites_replace_the_listed_names(backends) -> None:
    """The InferenceModelRewrite rules a pool's watch delivers replace the config's: listed from then on."""
    bs = await backends(1)
    async with running_gateway(make_config([bs[0].address], extra=REWRITES)) as gw:
        gw._policy_listener(gw.pools[0])({}, [RewriteRule(["live"], [RewriteTarget("m", 1)])])
        _, body = await _call(gw.port, "GET", "/v1/models")
        assert sorted(m["id"] for m in orjson.loads(body)["data"]) == ["live", "m"]
        assert sorted(gw._pool_models(gw.pools[0])) == ["live", "m"]
        head, _ = await _call(gw.port, "GET", "/v1/models/live")
        assert head.startswith(b"HTTP/1.1 200"), head


def test_client_names_read_the_rules_as_the_rewriter_does() -> None:
    from kvgate.config.rewrite import client_names  # (here: the tests above run on the code before it)

    rules = [
        RewriteRule(["a", "b"], [RewriteTarget("x", 1), RewriteTarget("m", 3)]),
        RewriteRule(["a", "c"], [RewriteTarget("m", 1)]),  # (a: the first rule's, already listed)
        RewriteRule(["d"], [RewriteTarget("elsewhere", 1)]),
        RewriteRule([], [RewriteTarget("m", 1)]),  # a catch-all: names no name
        RewriteRule(["e"], [RewriteTarget("m", 1)]),  # (exact wins over a catch-all before it: qa26 F1)
    ]
    assert client_names(rules, {"m"}) == [("a", "m"), ("b", "m"), ("c", "m"), ("e", "m")]
    assert client_names(rules, {"x"}) == [("a", "x"), ("b", "x")]
