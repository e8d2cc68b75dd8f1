"""Review s21-fixes-a M1: the same image with another question must share the image's prefix blocks.

vLLM caches an image's placeholder tokens (576 for LLaVA-1.5, the estimate's own figure) keyed by the
image's hash, so a second question about the same image hits ~36 blocks of 16 tokens. The approximate
prefix index hashes the rendering in 64-char blocks (16 tokens x 4 chars): an image rendered as a 26-char
``<|media:H|>`` shares its block with the text after it, so a different question means no shared block at
all (0 here), and the image's 576 estimated tokens are spread over the text's blocks by the cost scorer's
``per_block = p / len(hashes)``. Before 47de7fb the base64 text filled the first 256 blocks (matched)."""

from __future__ import annotations

import base64
import os

import orjson

from kvgate.openai.request import CHAT, MAX_LONG_MEDIA_PARTS, MEDIA_PART_CHARS, parse_body
from kvgate.scheduling.prefix import CHARS_PER_TOKEN, DEFAULT_BLOCK_TOKENS, block_hashes

IMAGE_TOKENS = 576  # the estimate's MEDIA_PART_TOKENS (literal: main before 47de7fb has no constant)


def _chat(url: str, question: str) -> bytes:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_the_same_image_with_another_question_shares_the_images_blocks() -> None:
    url = "data:image/png;base64," + base64.b64encode(os.urandom(30_000)).decode()
    chunk = DEFAULT_BLOCK_TOKENS * CHARS_PER_TOKEN
    one = parse_body(CHAT, _chat(url, "What is in this picture? Describe the scene in detail."))
    two = parse_body(CHAT, _chat(url, "How many people are there, and what are they wearing?"))
    shared = _common(block_hashes("m", one.prompt_text, chunk), block_hashes("m", two.prompt_text, chunk))
    # vLLM holds the image's tokens for the second question: the index should see (about) as many blocks.
    assert shared >= IMAGE_TOKENS // DEFAULT_BLOCK_TOKENS, (shared, one.prompt_text[:80])


def test_a_body_of_many_tiny_media_parts_renders_within_a_bound() -> None:
    # Review s21-fixes-c F1: every media part rendered as 2,304 characters, however small (a 17-byte
    # ``{"type":"image"}``): 50,000 of them were 115 M characters held for the request's life. Only a
    # request's first MAX_LONG_MEDIA_PARTS are rendered at full length; later ones as their tag alone.
    n = 50_000
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "image"}] * n}]})
    text = parse_body(CHAT, raw).prompt_text
    assert len(text) <= MAX_LONG_MEDIA_PARTS * MEDIA_PART_CHARS + n * 40, len(text)
    assert len(text) < 16 * len(raw), (len(text), len(raw))
    # A usual request (a few images) is rendered as before: each at full length.
    few = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "image"}] * 3}]})
    assert len(parse_body(CHAT, few).prompt_text) >= 3 * MEDIA_PART_CHARS
