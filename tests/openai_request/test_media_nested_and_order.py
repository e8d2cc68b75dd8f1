"""Review s21-fixes-a M3 / L3: media parts the F4 fix does not see.

M3: Anthropic Messages (``/v1/messages``, routed as an ``OTHER`` body read as a chat) carries tool output
screenshots inside a ``tool_result`` block's ``content`` list (computer use: every turn a screenshot).
``_render_chat`` looks for media only at the top level of a message's content, so the nested image is
rendered as its JSON: a 200 KB screenshot is ~67,000 tokens to the estimate again (the F4 symptom:
in-flight prefill, latency model, ``tokensPerMinute``'s charge when the stream is cut).

L3: the digest is of the part's JSON as sent, so the same image with its keys in another order (two client
libraries) reads as another image, while vLLM's multimodal hash is of the image itself."""

from __future__ import annotations

import base64
import os

import orjson

from kvgate.openai.request import CHAT, OTHER, parse_body


def _png() -> str:
    return base64.b64encode(os.urandom(200_000)).decode()


def test_an_image_inside_an_anthropic_tool_result_is_priced_as_an_image() -> None:
    shot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _png()}}
    messages = [
        {"role": "user", "content": "open the settings page"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "computer", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [shot]}]},
    ]
    raw = orjson.dumps({"model": "m", "max_tokens": 64, "messages": messages})
    parsed = parse_body(OTHER, raw)
    assert parsed.prompt_tokens < 5_000, parsed.prompt_tokens  # one image (576) and a few words


def test_the_same_image_with_its_keys_in_another_order_is_the_same_prefix() -> None:
    url = "data:image/png;base64," + _png()
    a = {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}
    b = {"image_url": {"detail": "auto", "url": url}, "type": "image_url"}
    one, two = (
        parse_body(CHAT, orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [p]}]}))
        for p in (a, b)
    )
    assert one.prompt_text == two.prompt_text
