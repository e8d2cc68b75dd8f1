"""The hub's non-streamed twin of qa30 Q8 (closing-s30 "Failover leftovers"): ``kvgate serve --clusters``
passed a non-streamed answer's head on at once, so a JSON body cut after it (a body short of its
Content-Length, or one framed by the close whose clean close came mid-JSON: the server died) reached the
client as a 200 whose body broke off, while another cluster was idle. Now the body is held whole first
(up to ``router.WHOLE_BODY_MAX``, as ``kvgate serve`` holds one) and a cut one moves the request on, as
a stream lost before its first event does. Real hub on loopback (Parent mode), a raw cluster gateway
writing the bytes itself (port 0).

Fails on main 691110b3: the client's 200 body does not parse (or its read fails)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from kvgate.multicluster.clusters import ClusterSpec
from rawupstream import raw_upstream

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
WHOLE = orjson.dumps(
    {"id": "cmpl-raw", "object": "text_completion", "model": "m",
     "choices": [{"index": 0, "text": "raw answer", "finish_reason": "length"}],
     "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
)  # fmt: skip
CUT = WHOLE[: len(WHOLE) // 2]
HEADS = {
    # a Content-Length the body falls short of, then a clean close
    "short": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(WHOLE),
    # no Content-Length, not chunked: the body framed by the close, which comes mid-JSON
    "close": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
}


async def _post(port: int) -> tuple[int, bytes, dict[str, str]]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
        try:
            return r.status, await r.read(), dict(r.headers)
        except aiohttp.ClientPayloadError as e:  # (before: the body broke off after the 200)
            return r.status, f"cut: {e}".encode(), dict(r.headers)


@pytest.mark.parametrize("framing", sorted(HEADS))
async def test_a_json_body_cut_after_its_head_moves_to_the_next_cluster(pods, global_gateway, framing):
    good = await pods()
    async with raw_upstream(HEADS[framing] + CUT) as bad:
        hub = await global_gateway(
            ClusterSpec("c0", gateway=bad.address), ClusterSpec("c1", gateway=good.address)
        )
        for _ in range(4):
            status, raw, _ = await _post(hub.port)
            assert status == 200, raw
            doc = orjson.loads(raw)  # (before: cut, or a short body that does not parse)
            assert doc["choices"][0]["text"].startswith("pod0-"), doc
        assert bad.hits, "the cutting cluster was never tried"


async def test_a_cut_json_body_with_no_other_cluster_is_a_503(global_gateway):
    async with raw_upstream(HEADS["close"] + CUT) as bad:
        hub = await global_gateway(ClusterSpec("c0", gateway=bad.address))
        status, raw, headers = await _post(hub.port)
        assert status == 503, raw
        assert headers.get("Retry-After") == "1", headers
        assert "body lost before its end" in orjson.loads(raw)["error"]["message"], raw
        assert bad.hits


async def test_a_whole_close_framed_json_body_is_relayed(global_gateway):
    async with raw_upstream(HEADS["close"] + WHOLE) as up:
        hub = await global_gateway(ClusterSpec("c0", gateway=up.address))
        status, raw, _ = await _post(hub.port)
        assert status == 200, raw
        assert orjson.loads(raw)["choices"][0]["text"] == "raw answer"
