"""An image in a chat request is priced as an image, not as its base64 text (review s21-qa F4: a 300 KB
image was ~100,000 prompt tokens to the estimate, so a tenant with ``tokensPerMinute: 20000`` whose image
stream was cut before its usage was refused its next request for a minute). Adapted from the review's
``test_qa21_image_prompt_estimate.py``: ``kvgate serve`` in-process, the tests' Backend cutting the stream."""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway

HDR = {"x-gateway-inference-fairness-id": "t1"}


@pytest.mark.parametrize("parts", [0, 1, 3], ids=["text-only-control", "one-image", "three-images"])
async def test_an_image_is_not_charged_as_its_base64_text(backends, parts: int) -> None:
    (b,) = await backends(1)
    extra = {"rateLimits": {"tokensPerMinute": 20000}}
    # 3 x 200 KB images (~270 KB of base64 each: ~67,000 "tokens" each by the text estimate), under the
    # gateway's 1 MiB body limit.
    urls = ["data:image/png;base64," + base64.b64encode(os.urandom(200_000)).decode() for _ in range(parts)]
    content = [{"type": "text", "text": "what is in this image?"}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    messages = [{"role": "user", "content": content}]
    first = orjson.dumps({"model": "m", "stream": True, "max_tokens": 4, "messages": messages})
    async with running_gateway(make_config([b.address], extra=extra)) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/chat/completions"
        b.mode = "cut"  # the stream is cut before its usage: the gateway charges its estimate
        async with s.post(url, data=first, headers=HDR) as r:
            assert r.status == 200  # (its head went out before the cut)
            await r.read()
        b.mode = "ok"
        for _ in range(500):  # (the gateway sees the stream end a moment later)
            if gw.proxy.inflight == 0:
                break
            await asyncio.sleep(0.01)
        small = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        async with s.post(url, data=small, headers=HDR) as r:
            assert r.status == 200, f"the tenant's next request: {r.status} {(await r.read())[:200]!r}"
