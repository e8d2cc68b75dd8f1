"""Review s17-qa L1: ``GET /v1/models`` through ``kvgate serve --clusters`` was ``404 no route`` (only the
three POST paths were routed), so ``openai.OpenAI(...).models.list()`` and the UIs that list models at
start failed against the global gateway, where ``kvgate serve`` answers its pools' models. Now it answers
the names the clusters' latest aggregates list (``PoolAggregate.models``), each with the clusters that
list it (docs/multicluster.md "Commands")."""

from __future__ import annotations

import asyncio
import time

import orjson

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


async def _call(port: int, method: str, path: str) -> tuple[bytes, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), 30)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_v1_models_lists_what_the_clusters_aggregates_list() -> None:
    specs = tuple(
        ClusterSpec(name=n, aggregate="http://127.0.0.1:9/a", gateway="127.0.0.1:9") for n in ("east", "west")
    )
    gw = GlobalGateway(ClustersConfig(clusters=specs), fetch=False)
    port = await gw.start()
    try:
        head, body = await _call(port, "GET", "/v1/models")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert orjson.loads(body) == {"object": "list", "data": []}  # no aggregate fetched yet
        now = time.monotonic()
        gw.router.states["east"].set_aggregate(PoolAggregate("p", 1.0, 1, 1, models=("llama", "lora-a")), now)
        gw.router.states["west"].set_aggregate(PoolAggregate("p", 1.0, 1, 1, models=("llama", "qwen")), now)
        head, body = await _call(port, "GET", "/v1/models")
        assert head.startswith(b"HTTP/1.1 200"), head
        doc = orjson.loads(body)
        assert doc["object"] == "list"
        got = {m["id"]: m["clusters"] for m in doc["data"]}
        assert got == {"llama": ["east", "west"], "lora-a": ["east"], "qwen": ["west"]}
        assert all(m["object"] == "model" and m["owned_by"] == "kvgate" for m in doc["data"])
        head, _ = await _call(port, "POST", "/v1/models")
        assert head.startswith(b"HTTP/1.1 405"), head
    finally:
        await gw.stop()


async def test_v1_models_id_answers_one_entry_of_the_list() -> None:
    """Review s20-qa L2: ``GET /v1/models/{id}`` (the openai SDK's ``models.retrieve``) was ``404 no route``;
    now the entry ``/v1/models`` lists under that id, else OpenAI's 404 ``model_not_found``. (Fails before
    fixqa20c: 404 no route.)"""
    specs = (ClusterSpec(name="east", aggregate="http://127.0.0.1:9/a", gateway="127.0.0.1:9"),)
    gw = GlobalGateway(ClustersConfig(clusters=specs), fetch=False)
    port = await gw.start()
    try:
        gw.router.states["east"].set_aggregate(
            PoolAggregate("p", 1.0, 1, 1, models=("alias", "org/llama")), time.monotonic()
        )
        head, body = await _call(port, "GET", "/v1/models/alias")
        assert head.startswith(b"HTTP/1.1 200"), (head, body)
        assert orjson.loads(body) == {"id": "alias", "object": "model", "created": 0, "owned_by": "kvgate",
                                      "root": "alias", "parent": None, "clusters": ["east"]}  # fmt: skip
        for path in ("/v1/models/org/llama", "/v1/models/org%2Fllama"):  # (the SDK may quote the slash)
            head, body = await _call(port, "GET", path)
            assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body)["id"] == "org/llama", (path, head)
        head, body = await _call(port, "GET", "/v1/models/nope")
        assert head.startswith(b"HTTP/1.1 404"), head
        err = orjson.loads(body)["error"]
        assert (err["code"], err["param"]) == ("model_not_found", "model") and "'nope'" in err["message"], err
        head, _ = await _call(port, "POST", "/v1/models/alias")
        assert head.startswith(b"HTTP/1.1 405"), head
    finally:
        await gw.stop()
