"""Session-20 closing note (qa20): "exotic ``model`` spellings in streams". ``kvgate serve`` puts the
client's model name back by bytes (``"model":<sent>`` -> ``"model":<client>``), with the sent name spelled
as orjson writes it (UTF-8 as is: vLLM, SGLang). A server writing JSON with Python's ``json.dumps``
defaults spells a non-ASCII name with ``\\uXXXX`` escapes, Go's ``encoding/json`` escapes ``<``, ``>``,
``&``: such a name was not found, and the name the gateway sent upstream reached the client in every
streamed chunk and whole answer (FAILED before). Now those spellings are looked for too (only for a name
that has them: a plain ASCII name's patterns are the two they were).

Not rewritten, by decision (documented): a key spelled with escapes (``"\\u006dodel"``) or spaced before
its colon (``"model" :``), a duplicate ``model`` key spelled otherwise than the first (no server seen writes
them; finding them would mean parsing every event of every stream). A duplicate key spelled alike is
rewritten in a stream and now in a whole answer held whole (every match; before, the first only: a JSON
reader takes the last); an answer too big to hold (``PieceRewriter``) still has its first one rewritten."""

from __future__ import annotations

import json
import re

import orjson
import pytest

from kvgate.gateway.bigbody import PieceRewriter
from kvgate.gateway.stream import BodyRewriter, StreamRelay, _model_patterns

CLIENT = "alias"


def _chunk(model_json: bytes, text: str = "hi") -> bytes:
    return (
        b'data: {"id":"c","object":"text_completion","model":'
        + model_json
        + (b',"choices":[{"index":0,"text":"%s"}]}\n\n' % text.encode())
    )


def _ascii_hex_upper(s: bytes) -> bytes:
    return re.sub(rb"\\u([0-9a-f]{4})", lambda m: b"\\u" + m.group(1).upper(), s)


SPELLINGS = {
    # (the name sent upstream, how the server spells it)
    "python json.dumps, non-ASCII": ("mod\u00e8le-b", json.dumps("mod\u00e8le-b").encode()),
    "python json.dumps, outside the BMP": ("m\U0001f600", json.dumps("m\U0001f600").encode()),
    "upper-case hex escapes": ("mod\u00e8le-b", _ascii_hex_upper(json.dumps("mod\u00e8le-b").encode())),
    "go encoding/json, &": ("a&b", b'"a\\u0026b"'),
    "go encoding/json, <>": ("<m>", b'"\\u003cm\\u003e"'),
}


@pytest.mark.parametrize("sent,spelled", list(SPELLINGS.values()), ids=list(SPELLINGS))
def test_a_name_spelled_with_escapes_is_put_back_in_streams_and_whole_answers(
    sent: str, spelled: bytes
) -> None:
    assert orjson.loads(spelled) == sent
    for sep in (b"", b" "):
        chunk = _chunk(spelled).replace(b'"model":', b'"model":' + sep)
        relay = StreamRelay(sent, CLIENT, strip_usage=False)
        out = relay.feed(chunk) + relay.finish()
        assert orjson.loads(out[6:].strip())["model"] == CLIENT, out
        body = chunk[6:].strip()
        assert orjson.loads(BodyRewriter(sent, CLIENT).rewrite(body))["model"] == CLIENT
        big = PieceRewriter(sent, CLIENT, 1 << 20)
        assert (
            orjson.loads(b"".join(big.feed(body[i : i + 7]) for i in range(0, len(body), 7)) + big.finish())[
                "model"
            ]
            == CLIENT
        )


def test_a_plain_ascii_name_keeps_its_two_patterns() -> None:
    assert len(_model_patterns("org/model-7b", CLIENT)) == 2


def test_a_duplicate_model_key_spelled_alike_is_put_back_everywhere() -> None:
    body = b'{"model":"sent","x":1,"model":"sent"}'
    relay = StreamRelay("sent", CLIENT, strip_usage=False)
    assert b'"sent"' not in relay.feed(b"data: " + body + b"\n\n") + relay.finish()
    # (a JSON reader takes the last one: a whole answer's second was left, FAILED before)
    assert orjson.loads(BodyRewriter("sent", CLIENT).rewrite(body))["model"] == CLIENT
