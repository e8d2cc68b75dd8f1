"""s17-fixes-b M2: a02b4c3 reads an Anthropic usage's ``input_tokens`` as the prompt tokens. Anthropic
(and vLLM's /v1/messages, vllm/entrypoints/anthropic/serving.py _build_anthropic_usage) define the total
input as ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``: vLLM subtracts the
cached tokens from ``input_tokens`` when prompt_tokens_details are on. A prefix-cached /v1/messages request
(kvgate's routing aims at exactly those) is charged only its uncached part (tokensPerMinute mostly
bypassed again), while the same prompt on /v1/chat/completions is charged in full (prompt_tokens
includes cached_tokens).
Fixed (fixfb17b): prompt = input + cache reads + cache writes, cached = cache reads (``input_usage``).
"""

from __future__ import annotations

import orjson

from kvgate.openai.protocol import usage_from
from kvgate.openai.usage import UsageTail, usage_from_body
from kvgate.scheduling.types import Usage

# vLLM's message for prompt_tokens=1000 with 990 cached (prompt_tokens_details.cached_tokens=990)
MSG = {
    "type": "message",
    "content": [{"type": "text", "text": "hi"}],
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 990, "output_tokens": 5},
}


def test_non_streamed_message_counts_cached_input_tokens() -> None:
    u = usage_from_body(orjson.dumps(MSG))
    assert u is not None
    assert u.prompt_tokens == 1000, f"charged {u.prompt_tokens} prompt tokens of 1000 (990 cache reads)"


def test_message_delta_counts_cached_input_tokens() -> None:
    ev = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": MSG["usage"]}
    u = usage_from(ev)
    assert u is not None
    assert u.prompt_tokens == 1000, f"charged {u.prompt_tokens} prompt tokens of 1000 (990 cache reads)"


def test_a_streamed_message_counts_cache_reads_and_writes() -> None:
    """The usual stream: ``message_start`` carries the input (with cache reads and writes), the last
    ``message_delta`` only ``output_tokens``; the pass-through tail reads the whole input."""
    start = {"type": "message_start", "message": {"id": "m", "type": "message", "content": [],
             "usage": {"input_tokens": 10, "cache_read_input_tokens": 900,
                       "cache_creation_input_tokens": 90, "output_tokens": 1}}}  # fmt: skip
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}
    stream = b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
        for e in (start, delta, {"type": "message_stop"})
    )
    tail = UsageTail()
    tail.feed(stream)
    assert tail.usage() == Usage(1000, 5, 900, True)


def test_responses_input_tokens_already_include_cached() -> None:
    """OpenAI Responses' ``input_tokens`` is the whole input: unchanged."""
    u = usage_from({"usage": {"input_tokens": 1000, "output_tokens": 5,
                              "input_tokens_details": {"cached_tokens": 990}}})  # fmt: skip
    assert u == Usage(1000, 5, 990, True)
