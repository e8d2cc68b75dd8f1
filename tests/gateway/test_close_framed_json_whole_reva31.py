"""Review s31-rev-a31 F1 and F3, ``kvgate serve``'s door: a WHOLE close-framed JSON body was taken for a
cut one (``TruncatedBody``: 503 with one endpoint) when it had a ``Content-Encoding`` (F1: its bytes are
not the JSON's) or was JSON Python's ``json`` reads but orjson refuses (F3). And ``openai.framing``'s
rule itself: every cut of a standard JSON body is cut, Python's extensions and non-JSON bodies are not.
The door tests fail on 7131a4a0 (503) and pass on 94a2514f^; the rule's on 7131a4a0 for F1 / F3."""

from __future__ import annotations

import gzip
import json

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.openai.framing import whole_json
from rawupstream import raw_upstream

BODY = b'{"model":"m","prompt":"x","max_tokens":2}'
WHOLE = orjson.dumps(
    {"id": "cmpl-raw", "object": "text_completion", "model": "m",
     "choices": [{"index": 0, "text": "raw answer \u00e9 \U0001f642", "finish_reason": "length"}]}
)  # fmt: skip
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
CASES = {
    "gzip": (HEAD + b"content-encoding: gzip\r\n\r\n", gzip.compress(WHOLE)),  # F1
    "nan": (HEAD + b"\r\n", WHOLE[:-1] + b',"logprob":NaN}'),  # F3
    "bom": (HEAD + b"\r\n", b"\xef\xbb\xbf" + WHOLE),  # F3
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_gateway_relays_a_whole_close_framed_json_body(case):
    head, body = CASES[case]
    async with (
        raw_upstream(head + body) as up,
        running_gateway(make_config([up.address])) as gw,
        aiohttp.ClientSession(auto_decompress=False) as s,
    ):
        async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            raw = await r.read()
        assert r.status == 200, raw  # (before: 503 "TruncatedBody")
        assert raw == body
        assert len(up.hits) == 1


PYTHON_JSON = [
    json.dumps({"a": float("nan"), "b": [float("-inf"), 1e300], "s": "\ud800x", "t": "\u00e9"}).encode(),
    b'{"a": 1e400}',
    b"\xef\xbb\xbf" + WHOLE,
]


@pytest.mark.parametrize("body", [WHOLE, json.dumps({"a": [1.5, True, None, {}]}, indent=2).encode()])
def test_every_cut_of_a_standard_json_body_is_cut(body):
    assert whole_json("application/json", body, "")
    kept = [n for n in range(len(body)) if whole_json("application/json", body[:n], "")]
    assert kept == [], [body[:n] for n in kept]


@pytest.mark.parametrize("body", [*PYTHON_JSON, b"Internal Server Error", b'{"a":1}xx', b'{"a":"\xff"}'])
def test_json_python_reads_and_non_json_are_not_cut(body):
    assert whole_json("application/json", body, "")


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate", "zstd"])
def test_a_coded_body_is_not_checked(coding):
    assert whole_json("application/json", WHOLE[:-1], coding)
    assert not whole_json("application/json", WHOLE[:-1], "identity")
    assert not whole_json("application/json", WHOLE[:-1], "")
