"""The request's media budget (``MAX_LONG_MEDIA_PARTS`` parts at full length, later ones as their tag) on
every path that renders media, and what it means for the estimate (review s22-rev22a F1-F3).

F1: every media part counts ``MEDIA_PART_TOKENS`` in the estimate, past the 64th too (it counted its
26-character tag's 6 tokens: a 100-image request read as 37,100 tokens, not 57,600). F2: the rendering's
bound is 147 KB + the tag per later part. F3 (guards, passing before; each failed on a mutant of the review):
a budget per message, a fresh budget for a part's nested ``content`` list, a budget shared across requests;
and the Responses API's rendering (``render_responses``) spends the same one budget.
"""

from __future__ import annotations

import threading

import orjson

from kvgate.openai.request import (
    CHAT,
    MAX_LONG_MEDIA_PARTS,
    MEDIA_PART_CHARS,
    MEDIA_PART_TOKENS,
    MESSAGES,
    RESPONSES,
    parse_body,
)

N = 2_000  # parts: far past the budget (a part's tag is 26 characters)
TAG = 40  # generous room per tag-only part and per message's frame


def _bound(n: int) -> int:
    return MAX_LONG_MEDIA_PARTS * MEDIA_PART_CHARS + n * TAG


def _img(i: int) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{i:08d}"}}


def _urls(n: int) -> bytes:
    parts = [{"type": "image_url", "image_url": {"url": f"https://x/{i}.png"}} for i in range(n)]
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": parts}]})


def test_every_media_part_counts_media_part_tokens_in_the_estimate() -> None:
    n = MAX_LONG_MEDIA_PARTS + 36  # 100 images (a multi-page document, video frames)
    many = parse_body(CHAT, _urls(n))
    assert many.prompt_tokens >= n * MEDIA_PART_TOKENS, many.prompt_tokens
    # Exactly what a rendering of every part at full length would read (the frame's characters alike).
    one = parse_body(CHAT, _urls(1))
    assert many.prompt_tokens - one.prompt_tokens == (n - 1) * MEDIA_PART_TOKENS


def test_the_responses_estimate_counts_every_media_part_too() -> None:
    n = MAX_LONG_MEDIA_PARTS * 2
    items = [
        {"role": "user", "content": [{"type": "input_image", "image_url": f"https://x/{i}"}]}
        for i in range(n)
    ]
    parsed = parse_body(RESPONSES, orjson.dumps({"model": "m", "input": items}))
    assert parsed.prompt_tokens >= n * MEDIA_PART_TOKENS, parsed.prompt_tokens
    assert len(parsed.prompt_text) <= _bound(n)


def test_many_tiny_media_parts_render_within_147_kb_and_a_tag_per_later_part() -> None:
    n = 50_000  # 50,000 x ``{"type":"image"}``: an 850 KB body
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "image"}] * n}]})
    parsed = parse_body(CHAT, raw)
    assert (
        len(parsed.prompt_text)
        <= MAX_LONG_MEDIA_PARTS * MEDIA_PART_CHARS + (n - MAX_LONG_MEDIA_PARTS) * 26 + 64
    )
    assert parsed.prompt_tokens >= n * MEDIA_PART_TOKENS


def test_many_messages_each_with_one_media_part_share_one_budget() -> None:
    # Tool messages each carrying an image (and user turns): a per-message budget would render every one
    # at 2,304 characters.
    msgs = [
        {"role": "tool" if i % 2 else "user", "tool_call_id": "t", "content": [_img(i)]} for i in range(N)
    ]
    raw = orjson.dumps({"model": "m", "messages": msgs})
    text = parse_body(CHAT, raw).prompt_text
    assert len(text) <= _bound(N) + len(raw), (len(text), len(raw))


def test_media_inside_nested_tool_results_share_the_requests_budget() -> None:
    # Anthropic tool_result parts each carrying screenshots: nested ``content`` lists.
    parts = [
        {"type": "tool_result", "tool_use_id": "x", "content": [_img(i), _img(-i)]} for i in range(N // 2)
    ]
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": parts}]})
    for kind in (CHAT, MESSAGES):
        text = parse_body(kind, raw).prompt_text
        assert len(text) <= _bound(N) + len(raw), (kind, len(text), len(raw))


def test_responses_items_share_the_requests_budget() -> None:
    # Function-call outputs each carrying a screenshot, and user messages with an image: one budget.
    items: list[dict] = []
    for i in range(N // 2):
        items.append({"type": "function_call_output", "call_id": "c", "output": [_img(i)]})
        items.append({"role": "user", "content": [{"type": "input_image", "image_url": f"https://x/{i}"}]})
    raw = orjson.dumps({"model": "m", "input": items})
    text = parse_body(RESPONSES, raw).prompt_text
    assert len(text) <= _bound(N) + len(raw), (len(text), len(raw))


def test_each_request_has_its_own_budget_across_requests_and_threads() -> None:
    big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [_img(i) for i in range(N)]}]})
    few = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [_img(i) for i in range(3)]}]})
    want_few = parse_body(CHAT, few).prompt_text
    assert len(want_few) >= 3 * MEDIA_PART_CHARS
    want_big = parse_body(CHAT, big).prompt_text
    got: list[tuple[str, str]] = []

    def work() -> None:
        for _ in range(3):
            got.append((parse_body(CHAT, big).prompt_text, parse_body(CHAT, few).prompt_text))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 12 and all(b == want_big and f == want_few for b, f in got)
