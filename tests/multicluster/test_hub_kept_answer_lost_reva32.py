"""Review s32-rev-a32 F1: a cluster's 504 (its gateway's or pod's timeout: the request may still run
there, so it is the client's answer, never sent elsewhere: qa25 F4) or a 429 marked ``x-envoy-ratelimited``
(the client's own limit: review s18-qa M4) whose body is cut before its end was dropped as ``body lost
before its end`` and the request went on to the next cluster: a second run of a request the first may still
be running. Now it ends as a lost second 500 does (fail32's ``DeathLost``): that status, the hub's own body;
a 504 backs the cluster off as a relayed one does, a rate-limited 429 does not. Real hub on loopback (Parent
mode): c0 a raw server (port 0) answering the cut head, c1 would answer 200.

Fails on main 06fe0a45 (c1 answers it, 200)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from kvgate.multicluster.clusters import ClusterSpec
from rawupstream import raw_upstream

# (c0's answer, the client's status, the words of the hub's message, whether c0 backs off): an Envoy-style
# text/plain 504 short of its Content-Length; a rate-limit 429 cut likewise
CASES = {
    "504": (
        b"HTTP/1.1 504 Gateway Timeout\r\ncontent-type: text/plain\r\ncontent-length: 24\r\n\r\nupstream req",
        504,
        "may still run there",
        True,
    ),
    "429_ratelimited": (
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\nx-envoy-ratelimited: true\r\n"
        b"retry-after: 7\r\ncontent-length: 40\r\n\r\nrate lim",
        429,
        "rate-limited",
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_an_answer_not_to_resend_whose_body_is_cut_ends_the_request(pods, global_gateway, case):
    answer, expected, words, backs_off = CASES[case]
    good = await pods()
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    async with raw_upstream(answer) as cut:
        # (round-robin: the first request's order is c0, c1)
        hub = await global_gateway(
            ClusterSpec("c0", gateway=cut.address), ClusterSpec("c1", gateway=good.address)
        )
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{hub.port}/v1/completions", data=body) as r:
                status, raw, wait = r.status, await r.read(), r.headers.get("Retry-After")
            async with http.get(f"http://127.0.0.1:{hub.port}/v1/clusters") as r:
                clusters = orjson.loads(await r.read())
        assert cut.hits == [1]
        assert (status, len(good.received)) == (expected, 0), (status, raw)
        message = orjson.loads(raw)["error"]["message"]
        assert words in message and "body lost before its end" in message, message
        backing_off = [c["name"] for c in clusters if c["backing_off"]]
        assert backing_off == (["c0"] if backs_off else []), clusters
        if expected == 429:
            assert wait == "7"  # (the cut 429's own Retry-After)
