"""rev-e32 on 4d24a341/15c2a7c7 (qa32a Q1, Q3): ``parse_body`` reads ``stream_options.include_usage`` as
vLLM's lax pydantic ``bool`` (``"true"`` is True; ``ParsedBody.wants_usage``), and ``kvgate serve`` follows
it; ``kvgate serve --clusters`` re-reads the key itself, strictly (``multicluster/serve.py:598``:
``opts.get("include_usage") is True``), so a stream whose client sent ``"include_usage": "true"`` (served
with its usage chunk by vLLM, and by the test backend) is routed with ``ClusterRequest.usage`` False: its
usage event does not classify the answer as a prefix hit or miss (``router.py:1263``). F3; fails on main
06fe0a45 and adadc788 (``usage`` False for ``"true"``, ``"yes"``, ``1``); fixreve32 reads
``ParsedBody.client_wants_usage``."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


@pytest.mark.parametrize("asked", [True, "true", "yes", 1])
async def test_a_lax_include_usage_asks_for_the_usage_event_behind_clusters(asked: Any) -> None:
    backend = await Backend("b0", tokens=5).start()
    mc = GlobalGateway(ClustersConfig((ClusterSpec("c", gateway=backend.address),)), "round-robin",
                       fetch=False, seed=1)  # fmt: skip
    await mc.start("127.0.0.1", 0)
    seen: list[bool] = []
    route = mc.router.route

    async def spy(path: str, headers: Any, raw: bytes, creq: Any, **kw: Any) -> Any:
        seen.append(creq.usage)
        return await route(path, headers, raw, creq, **kw)

    mc.router.route = spy  # type: ignore[method-assign]
    try:
        doc = {"model": "m", "prompt": "x", "max_tokens": 5, "stream": True,
               "stream_options": {"include_usage": asked}}  # fmt: skip
        url = f"http://127.0.0.1:{mc.port}/v1/completions"
        async with aiohttp.ClientSession() as s, s.post(url, data=orjson.dumps(doc)) as r:
            assert r.status == 200
            text = await r.read()
        assert b'"usage"' in text  # (the server sent its usage event: lax True, as vLLM reads it)
        assert seen == [True]
    finally:
        await mc.stop()
        await backend.stop()
