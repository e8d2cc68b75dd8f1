"""rev-prev24 F3: vLLM 0.32 prefills a follow-up as its own tools/``instructions`` first, then the stored
conversation without any earlier system message, then its new input (``construct_input_messages``). So a
kept turn leaves its own head (tools + instructions) out of its tokens, and the earlier block chain is a
prefix of the follow-up's prompt only when the two heads are the same."""

from __future__ import annotations

from kvgate.openai.request import RESPONSES, parse_body
from kvgate.openai.responses import finished_turn, follow_up
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.prefix import block_hashes
from kvgate.scheduling.types import InferenceRequest, Usage
from scheduling.helpers import cycle, ep, handle

DOC = "glacier heron ivory juniper " * 40  # 1,120 characters: ~280 tokens as characters / 4


def _request(body: bytes) -> tuple[InferenceRequest, int]:
    parsed = parse_body(RESPONSES, body)
    req = InferenceRequest("q", "m", prompt_text=parsed.prompt_text, prompt_tokens=parsed.prompt_tokens)
    return req, parsed.lead_chars


def test_the_lead_is_the_tools_and_instructions_at_the_prompts_start() -> None:
    parsed = parse_body(RESPONSES, b'{"model": "m", "instructions": "Be brief.", "input": "Hi"}')
    assert parsed.prompt_text[: parsed.lead_chars] == "<|system|>\nBe brief.\n"
    bare = parse_body(RESPONSES, b'{"model": "m", "input": "Hi"}')
    assert bare.lead_chars == 0
    tools = parse_body(
        RESPONSES, b'{"model": "m", "tools": [{"type": "function", "name": "f"}], "input": "Hi"}'
    )
    assert tools.prompt_text[tools.lead_chars :] == "<|user|>\nHi\n"


def test_a_kept_turn_leaves_out_its_instructions() -> None:
    req, lead = _request(b'{"model": "m", "instructions": "%s", "input": "Q1?"}' % DOC.encode())
    follow_up(req, True, None, lead)
    assert req.conversation is not None and req.conversation.lead_tokens >= 270
    req.conversation.response_id = "resp_1"
    # The server counted 400 prompt tokens where the estimate said ~285: the instructions' share of them.
    turn = finished_turn(req, Usage(400, 8))
    assert turn is not None
    assert 8 <= turn.tokens <= 8 + 12, turn.tokens  # (the output + "Q1?"'s few, not the document)
    estimate = finished_turn(req, None)
    assert estimate is not None and estimate.tokens <= 6  # (no usage: the estimate less the head)


def test_a_follow_up_counts_its_own_instructions_once() -> None:
    first, lead = _request(b'{"model": "m", "instructions": "%s", "input": "Q1?"}' % DOC.encode())
    follow_up(first, True, None, lead)
    assert first.conversation is not None
    first.conversation.response_id = "resp_1"
    turn = finished_turn(first, Usage(first.prompt_tokens, 8))
    assert turn is not None
    again, lead2 = _request(
        b'{"model": "m", "instructions": "%s", "input": "Q2?", "previous_response_id": "resp_1"}'
        % DOC.encode()
    )
    own = again.prompt_tokens
    follow_up(again, True, turn, lead2)
    # vLLM: [DOC, Q1, A1, Q2]: the document once.
    assert own + 8 <= again.prompt_tokens <= own + 8 + 4
    assert again.conversation is not None and list(again.conversation.head) == list(turn.hashes)
    # Without instructions (vLLM drops the earlier ones): the conversation alone, and no head, as the
    # earlier chain starts with the document the server no longer prefills.
    bare, lead3 = _request(b'{"model": "m", "input": "Q2?", "previous_response_id": "resp_1"}')
    own = bare.prompt_tokens
    follow_up(bare, True, turn, lead3)
    assert bare.prompt_tokens == own + turn.tokens and turn.tokens <= 12
    assert bare.conversation is not None and not bare.conversation.head
    # Other instructions: the same.
    other, lead4 = _request(
        b'{"model": "m", "instructions": "Other.", "input": "Q2?", "previous_response_id": "resp_1"}'
    )
    follow_up(other, True, turn, lead4)
    assert other.conversation is not None and not other.conversation.head


def test_the_chain_continues_with_the_new_input_only() -> None:
    """The follow-up's own head is the earlier chain's start already: only its input is chained on."""
    a, b = ep("a:1"), ep("b:1")
    s = PrefixCacheScorer("p", handle())
    body = b'{"model": "m", "instructions": "%s", "input": "%s"}'
    first, lead = _request(body % (DOC.encode(), b"q" * 64 * 2))
    follow_up(first, True, None, lead)
    c1 = cycle(first.prompt_text, conversation=first.conversation)
    s.prepare(c1, [a, b])
    s.on_picked(c1, a)
    conv = first.conversation
    assert conv is not None and conv.chain
    conv.response_id = "resp_1"
    turn = finished_turn(first, Usage(first.prompt_tokens, 4))
    assert turn is not None
    nxt, lead2 = _request(body % (DOC.encode(), b"n" * 64 * 2))
    follow_up(nxt, True, turn, lead2)
    c2 = cycle(nxt.prompt_text, conversation=nxt.conversation)
    s.prepare(c2, [a, b])
    m = prefix_match(c2)
    assert m is not None and m.hashes[: len(conv.chain)] == list(conv.chain)
    own = nxt.prompt_text[lead2:]
    assert m.hashes[len(conv.chain) :] == block_hashes("m", own, 64, seed=conv.chain[-1])


def test_store_null_keeps_nothing() -> None:
    """vLLM's ``if request.store``: ``"store": null`` stores nothing (the doors pass the body's ``store``,
    True when absent)."""
    req, _ = _request(b'{"model": "m", "input": "x", "store": null}')
    follow_up(req, None, None)
    assert req.conversation is None
