"""Review rev-b34 F7: ``kvgate epp``'s ``openai-parser`` claims its paths by suffix, as llm-d-router's
ParserRegistry matches a parser's claimed paths (``request.MatchPathSuffix``). Behind a route that keeps a
prefix (``/openai/v1/chat/completions``), ``[openai-parser, passthrough-parser]`` sent a chat completion
through unread before (no prompt for the prefix scorer, no usage); the default chain read it as an unknown
path (the model only). Driven through a real grpcio ext_proc client."""

from __future__ import annotations

import orjson

from kvgate.config.picker import load_config
from kvgate.extproc.parsers import ParserRoutes
from kvgate.extproc.testing import Exchange
from kvgate.openai.request import CHAT, OTHER, RENDER_COMPLETIONS, kind_for_path, kind_for_suffix

from .test_passthrough_parser_qa34a import ADDRS, AUDIO, BOTH, FORM, _epp, _value

CHAT_BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello there"}]})
PREFIXED = {":method": "POST", ":path": "/openai/v1/chat/completions", "content-type": "application/json"}
ANSWER = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})


def test_the_openai_parser_claims_its_paths_as_suffixes() -> None:
    both = ParserRoutes(load_config(BOTH).parsers)
    assert not both.passthrough("/openai/v1/chat/completions")
    assert not both.passthrough("/a/b/v1/completions/render?x=1")
    assert both.passthrough("/openai/v1/audio/transcriptions") and both.passthrough("/openai/v1")
    assert kind_for_suffix("/openai/v1/chat/completions/") == CHAT
    assert kind_for_suffix("/x/v1/completions/render") == RENDER_COMPLETIONS  # (the longest suffix)
    assert kind_for_suffix("/v1/xchat/completions") == OTHER  # (a whole path segment only)
    assert kind_for_path("/openai/v1/chat/completions") == OTHER  # (the front doors' exact routes)


async def test_a_prefixed_chat_completion_is_read_by_the_openai_parser() -> None:
    async with _epp(BOTH) as (stub, metrics):
        async with Exchange(stub) as ex:
            out = await ex.send_request(PREFIXED, CHAT_BODY)
            assert out.immediate is None and out.destination in ADDRS
            got = await ex.send_response(200, {"content-type": "application/json"}, [ANSWER])
            assert got.body == ANSWER
        assert _value(metrics, "kvgate_epp_prompt_tokens_total") == 7  # its usage read (passthrough: 0)
        # the prefixed audio path still goes through unread
        async with Exchange(stub) as ex:
            out = await ex.send_request({**AUDIO, ":path": "/openai/v1/audio/transcriptions"}, FORM)
        assert out.immediate is None and out.body == FORM


async def test_the_default_parser_reads_a_prefixed_path_as_its_api() -> None:
    """openai-parser alone: a body-less POST to a prefixed chat path is the inference API's 400, as on
    ``/v1/chat/completions`` (before: routed as an unknown path)."""
    async with _epp(None) as (stub, _metrics):
        async with Exchange(stub) as ex:
            bare = await ex.send_request(PREFIXED, None)
        assert bare.immediate is not None and bare.immediate.status.code == 400, bare
