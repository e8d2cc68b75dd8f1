"""qa23 F1: without a usage chunk, ``kvgate epp`` counts a stream's output events as its completion
tokens (one per chat / completions event with a choice, from the first with output), so its latency
model and decode pace learn as ``kvgate serve``'s do from the usage it asks for."""

from __future__ import annotations

import random

import orjson
import pytest

from kvgate.extproc.output_events import CountingScanner
from kvgate.scheduling.types import Usage


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat(delta: dict[str, object], finish: str | None = None, index: int = 0) -> bytes:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return event({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]})


STREAM = (
    chat({"role": "assistant", "content": ""})
    + chat({"content": "a"})
    + chat({"content": " b"})
    + chat({"content": " c"}, "length")
)
USAGE = event({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
               "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})  # fmt: skip


@pytest.mark.parametrize("rewrite", [None, "client-name"])
@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_output_events_count_as_tokens_in_any_chunking(size: int, rewrite: str | None) -> None:
    s = CountingScanner(rewrite)
    raw = STREAM + b"data: [DONE]\n\n"
    for i in range(0, len(raw), size):
        s.feed(raw[i : i + size])
    s.finish()
    assert s.output_events == 3  # the role chunk and [DONE] are no output
    assert s.learned_usage() == Usage(completion_tokens=3)


def test_a_usage_chunk_wins_and_is_not_counted() -> None:
    s = CountingScanner()
    s.feed(STREAM + USAGE + b"data: [DONE]\n\n")
    assert s.output_events == 3
    usage = s.learned_usage()
    assert usage is not None and usage.prompt_tokens == 7 and usage.completion_tokens == 3


def test_completions_and_n_choices_count_every_choice() -> None:
    s = CountingScanner()
    for i in range(2):
        for t in range(4):
            s.feed(event({"id": "x", "object": "text_completion", "model": "m",
                          "choices": [{"index": i, "text": f"t{t}", "finish_reason": None}]}))  # fmt: skip
    assert s.learned_usage() == Usage(completion_tokens=8)  # (the Director divides by the sequences)


def test_no_output_no_usage() -> None:
    s = CountingScanner()
    s.feed(chat({"role": "assistant", "content": ""}) + b"data: [DONE]\n\n")
    assert s.output_events == 0 and s.learned_usage() is None


def test_a_typed_stream_without_usage_counts_nothing() -> None:
    s = CountingScanner()
    s.feed(event({"type": "response.created", "response": {"id": "r"}}))
    for _ in range(3):
        s.feed(event({"type": "response.output_text.delta", "delta": "a"}))
    assert s.saw_output and s.output_events == 0 and s.learned_usage() is None


def _random_stream(rng: random.Random) -> bytes:
    nl = rng.choice([b"\n", b"\r\n"])
    parts = [chat({"role": "assistant", "content": ""})]
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.05:
            parts.append(b": ping\n\n")
        elif r < 0.1:
            parts.append(event({"error": {"message": "x"}}))
        elif r < 0.15:  # a token whose text holds the pattern (escaped in JSON: not a choice)
            parts.append(chat({"content": '"choices":[{'}))
        else:
            parts.append(chat({"content": "t"}, index=rng.randint(0, 2)))
    if rng.random() < 0.3:
        parts.append(USAGE)
    raw = b"".join(parts).replace(b"\n", nl) + b"data: [DONE]\n\n"
    return raw.rstrip(b"\n") if rng.random() < 0.3 else raw  # (the last event without its newline)


def test_the_per_chunk_count_equals_the_per_line_count() -> None:
    """Review s23-rev-fixqa23 R5: past the first output event the count is taken per fed chunk (two
    ``bytes.count`` over its complete lines), not per line; in any chunking it is the per-line count
    (the stream fed in one piece is counted line by line)."""
    rng = random.Random(23)
    for _ in range(300):
        raw = _random_stream(rng)
        whole = CountingScanner()
        whole.feed(raw)
        whole.finish()
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 12)))
        pieces = CountingScanner()
        for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            pieces.feed(raw[a:b])
        pieces.finish()
        assert (pieces.output_events, pieces.learned_usage()) == (
            whole.output_events,
            whole.learned_usage(),
        ), (
            cuts,
            raw,
        )
