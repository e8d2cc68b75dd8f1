"""Review s27-rev-loc27 F1: an id whose remembered home cluster is gone from the clusters file (renamed
here: the same gateway now named "b2") was never asked of the clusters: the hub's lookup went to the first
cluster (its 404) and a follow-up was routed by the policy (half of them to cluster a's 404), for as long as
the id stayed remembered (``HOMES_TTL_S``, an hour), while a hub that never knew the id asked and found it.
``kvgate serve`` asks for a home no longer in its pool; the hub now does too (``lookups.known_home``: such a
home is forgotten, the id asked). Both tests fail on 5f422093.

Real HTTP on loopback; every server binds port 0. ``LOCATE_S`` is raised to 60 s so a loaded machine's
slow answer to the ask is not a 503 ("could not ask") here.
"""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.multicluster import lookups
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from multicluster.test_hub_ask_rounds_loc27 import _hub

pytestmark = pytest.mark.asyncio


def _kept(store: ResponsesStore, rid: str) -> None:
    store.docs[rid] = {"id": rid, "object": "response", "status": "completed"}
    store.made.append(rid)


async def test_a_lookup_whose_home_cluster_was_renamed_asks_the_clusters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lookups, "LOCATE_S", 60.0)
    async with serving(ResponsesStore("w"), ResponsesStore("e")) as stores, aiohttp.ClientSession() as s:
        _kept(stores[1], "resp_k")
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        async with _hub(*specs) as gw:
            gw.responses.remember("resp_k", ("b", None))  # (made through this hub at cluster b)
            gw.reload(ClustersConfig((specs[0], ClusterSpec("b2", gateway=stores[1].address))))
            async with s.get(f"http://127.0.0.1:{gw.port}/v1/responses/resp_k") as r:
                # (before: cluster a's 404, never asked)
                assert (r.status, r.headers.get("x-kvgate-cluster")) == (200, "b2"), await r.read()
            assert gw.responses.home("resp_k") == ("b2", None)


async def test_a_follow_up_whose_home_cluster_was_renamed_asks_the_clusters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lookups, "LOCATE_S", 60.0)
    async with serving(ResponsesStore("w"), ResponsesStore("e")) as stores, aiohttp.ClientSession() as s:
        _kept(stores[1], "resp_k")
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        async with _hub(*specs) as gw:
            gw.responses.remember("resp_k", ("b", None))
            gw.reload(ClustersConfig((specs[0], ClusterSpec("b2", gateway=stores[1].address))))
            body = orjson.dumps({"model": "m", "input": "more", "previous_response_id": "resp_k"})
            got = []
            for _ in range(4):  # (round-robin: before, some went to cluster a, its 404)
                async with s.post(f"http://127.0.0.1:{gw.port}/v1/responses", data=body) as r:
                    got.append((r.status, r.headers.get("x-kvgate-cluster")))
            assert got == [(200, "b2")] * 4, got
