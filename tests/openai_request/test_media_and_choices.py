"""What a chat's media parts and a request's ``n`` / batch mean to the scheduler (reviews s21-qa F4, F5).

F4: a media part (an image as a base64 data URL) is a digest in the prefix text (the same image the same
prefix, another image another), repeated to ``MEDIA_PART_CHARS``: ``MEDIA_PART_TOKENS`` in the estimate
(review s21-fixes-a M1), not its bytes / 4.
F5: ``n`` x a completions batch's prompts is ``sequences``; a bad ``n`` is a 400 naming it."""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
import pytest

from kvgate.openai.request import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MAX_SEQUENCES,
    MEDIA_PART_CHARS,
    MEDIA_PART_TOKENS,
    OTHER,
    BodyError,
    RequestPolicy,
    inference_request,
    parse_body,
    render_chat,
)


def _image(size: int = 300_000) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(os.urandom(size)).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def _chat(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "you describe images"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, *parts]},
    ]


def test_an_image_is_a_digest_in_the_prefix_and_a_bounded_estimate() -> None:
    img, other = _image(), _image()
    text = render_chat(_chat(img))
    assert len(text) < MEDIA_PART_CHARS + 200  # (not the 400 KB of base64)
    assert render_chat(_chat(img)) == text  # the same image: the same prefix
    assert render_chat(_chat(other)) != text  # another image: another prefix, from the image on
    head = render_chat(_chat())[: -len("\n")]  # (the text before the image)
    assert text.startswith(head) and render_chat(_chat(other)).startswith(head)
    parsed = parse_body(CHAT, orjson.dumps({"model": "m", "messages": _chat(img, other)}))
    base = parse_body(CHAT, orjson.dumps({"model": "m", "messages": _chat()}))
    assert parsed.prompt_tokens == base.prompt_tokens + 2 * MEDIA_PART_TOKENS == len(parsed.prompt_text) // 4


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "UklGR" * 20_000, "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR" * 20_000}},
    ],
    ids=["input_audio", "video_url", "anthropic-image"],
)
def test_other_media_parts_alike(part: dict[str, Any]) -> None:
    parsed = parse_body(OTHER, orjson.dumps({"model": "m", "max_tokens": 5, "messages": _chat(part)}))
    assert "<|media:" in parsed.prompt_text and len(parsed.prompt_text) < MEDIA_PART_CHARS + 200
    base = parse_body(OTHER, orjson.dumps({"model": "m", "max_tokens": 5, "messages": _chat()}))
    assert parsed.prompt_tokens == base.prompt_tokens + MEDIA_PART_TOKENS


def test_text_only_chats_render_as_before() -> None:
    """Text parts joined, other parts without text (a tool call, a refusal) as their JSON: unchanged."""
    tool = {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": 1}}
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [tool]},
    ]
    want = "<|system|>\nS\n<|user|>\nab\n<|assistant|>\n" + orjson.dumps(tool).decode() + "\n"
    assert render_chat(messages) == want
    parsed = parse_body(CHAT, orjson.dumps({"model": "m", "messages": messages}))
    assert parsed.prompt_tokens == len(want) // 4


def _parsed(kind: str, **body: Any) -> Any:
    return parse_body(kind, orjson.dumps({"model": "m", **body}))


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("kind", "body", "sequences"),
    [
        (CHAT, {"messages": HI}, 1),
        (CHAT, {"messages": HI, "n": None}, 1),
        (CHAT, {"messages": HI, "n": 16}, 16),
        (CHAT, {"messages": HI, "n": 4.0}, 4),  # (vLLM's lax pydantic ``int`` takes it)
        (COMPLETIONS, {"prompt": ["a", "b", "c"]}, 3),
        (COMPLETIONS, {"prompt": ["a", "b", "c"], "n": 2}, 6),
        (COMPLETIONS, {"prompt": [[1, 2], [3], [4, 5, 6]], "n": 2}, 6),
        (COMPLETIONS, {"prompt": [1, 2, 3], "n": 2}, 2),  # (one prompt of token ids)
        (COMPLETIONS, {"prompt": "x", "n": 10**9}, MAX_SEQUENCES),  # the weight is bounded
        (EMBEDDINGS, {"input": ["a", "b"], "n": "anything"}, 1),  # (not the embeddings API's)
        (OTHER, {"input": "hi", "n": "anything"}, 1),  # (a Responses body: not its key either)
        (OTHER, {"prompt": ["a", "b"]}, 1),  # (another API's ``prompt`` list is no completions batch)
    ],
)
def test_sequences_are_n_times_the_prompts(kind: str, body: dict[str, Any], sequences: int) -> None:
    parsed = _parsed(kind, **body)
    assert parsed.sequences == sequences
    req = inference_request(parsed, request_id="r", model="m", policy=RequestPolicy())
    assert req.sequences == sequences


def test_a_batch_estimate_counts_every_prompt() -> None:
    assert _parsed(COMPLETIONS, prompt=[[1, 2], [3], [4, 5, 6]]).prompt_tokens == 6
    assert _parsed(COMPLETIONS, prompt=["a" * 40, "b" * 40]).prompt_tokens == (40 + 1 + 40) // 4


@pytest.mark.parametrize("n", [0, -1, 1.5, "2.5", "0", False, [2], 1e19, 1e300])
def test_a_bad_n_is_a_400_naming_it(n: Any) -> None:
    for kind, body in ((CHAT, {"messages": HI}), (COMPLETIONS, {"prompt": "x"})):
        with pytest.raises(BodyError) as info:
            _parsed(kind, **body, n=n)
        assert info.value.param == "n" and info.value.status == 400
