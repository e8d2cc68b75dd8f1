"""Review s31-rev-a31 F1 and F3: ``kvgate serve --clusters`` took WHOLE close-framed JSON bodies for cut
ones (``openai.framing.whole_json`` ran orjson on the bytes as they came) and moved the request on: sent
again to every other cluster, else 503 "body lost before its end" instead of the cluster's 200:

- F1: a body with ``Content-Encoding: gzip`` (the hub's session does not decompress and relays the
  coding as it came): its bytes are not the JSON's;
- F3: JSON that Python's ``json`` writes and reads but orjson refuses (``-Infinity``, a UTF-8 BOM, ``1e400``,
  a lone surrogate escape).

Each fails on 7131a4a0 (503) and passes on c6ebb662^. Real hub on loopback (port 0), a raw cluster
gateway on 127.0.0.1:0 writing the bytes itself."""

from __future__ import annotations

import gzip

import aiohttp
import orjson
import pytest

from kvgate.multicluster.clusters import ClusterSpec
from rawupstream import raw_upstream

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
WHOLE = orjson.dumps(
    {"id": "cmpl-raw", "object": "text_completion", "model": "m",
     "choices": [{"index": 0, "text": "raw answer", "finish_reason": "length"}]}
)  # fmt: skip
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
CASES = {
    "gzip": (HEAD + b"content-encoding: gzip\r\n\r\n", gzip.compress(WHOLE)),  # F1
    "infinity": (HEAD + b"\r\n", WHOLE[:-1] + b',"logprob":-Infinity}'),  # F3
    "bom": (HEAD + b"\r\n", b"\xef\xbb\xbf" + WHOLE),  # F3
    "1e400": (HEAD + b"\r\n", WHOLE[:-1] + b',"logprob":1e400}'),  # F3
    "surrogate": (HEAD + b"\r\n", WHOLE[:-1] + b',"s":"\\ud800"}'),  # F3
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hub_relays_a_whole_close_framed_json_body(global_gateway, case):
    head, body = CASES[case]
    async with raw_upstream(head + body) as up:
        hub = await global_gateway(ClusterSpec("c0", gateway=up.address))
        url = f"http://127.0.0.1:{hub.port}/v1/completions"
        async with aiohttp.ClientSession(auto_decompress=False) as http, http.post(url, data=BODY) as r:
            raw = await r.read()
        assert r.status == 200, raw  # (before: 503 "every cluster failed (last: body lost before its end)")
        assert raw == body  # (relayed as the cluster sent it)
        assert len(up.hits) == 1
